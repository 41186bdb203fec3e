from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Method(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METHOD_UNSPECIFIED: _ClassVar[Method]
    METHOD_VANILLA: _ClassVar[Method]
    METHOD_INPUT_X_GRADIENT: _ClassVar[Method]
    METHOD_GRADCAM: _ClassVar[Method]
    METHOD_GRADCAM_PP: _ClassVar[Method]
    METHOD_EIGENCAM: _ClassVar[Method]
    METHOD_INTEGRATED_GRADIENTS: _ClassVar[Method]
    METHOD_SMOOTHGRAD: _ClassVar[Method]
    METHOD_RISE: _ClassVar[Method]
    METHOD_CAM: _ClassVar[Method]
    METHOD_SCORECAM: _ClassVar[Method]
    METHOD_OCCLUSION: _ClassVar[Method]
    METHOD_GUIDED_BACKPROP: _ClassVar[Method]
    METHOD_DECONVNET: _ClassVar[Method]
    METHOD_GUIDED_GRADCAM: _ClassVar[Method]

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]

class ChannelReduction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNEL_REDUCTION_UNSPECIFIED: _ClassVar[ChannelReduction]
    CHANNEL_REDUCTION_MAX: _ClassVar[ChannelReduction]
    CHANNEL_REDUCTION_SUM: _ClassVar[ChannelReduction]
    CHANNEL_REDUCTION_L2: _ClassVar[ChannelReduction]

class IntegrationRule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTEGRATION_RULE_UNSPECIFIED: _ClassVar[IntegrationRule]
    INTEGRATION_RULE_GAUSS_LEGENDRE: _ClassVar[IntegrationRule]
    INTEGRATION_RULE_RIEMANN_LEFT: _ClassVar[IntegrationRule]
    INTEGRATION_RULE_RIEMANN_RIGHT: _ClassVar[IntegrationRule]
    INTEGRATION_RULE_RIEMANN_MIDDLE: _ClassVar[IntegrationRule]
    INTEGRATION_RULE_RIEMANN_TRAPEZOID: _ClassVar[IntegrationRule]

class Baseline(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BASELINE_UNSPECIFIED: _ClassVar[Baseline]
    BASELINE_ZEROS: _ClassVar[Baseline]
    BASELINE_BLACK: _ClassVar[Baseline]
    BASELINE_BLUR: _ClassVar[Baseline]
    BASELINE_UNIFORM: _ClassVar[Baseline]
    BASELINE_CUSTOM: _ClassVar[Baseline]

class SmoothGradAggregate(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SMOOTH_GRAD_AGGREGATE_UNSPECIFIED: _ClassVar[SmoothGradAggregate]
    SMOOTH_GRAD_AGGREGATE_MEAN: _ClassVar[SmoothGradAggregate]
    SMOOTH_GRAD_AGGREGATE_SQUARE: _ClassVar[SmoothGradAggregate]
    SMOOTH_GRAD_AGGREGATE_VARIANCE: _ClassVar[SmoothGradAggregate]

class ScoreCamWeighting(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCORE_CAM_WEIGHTING_UNSPECIFIED: _ClassVar[ScoreCamWeighting]
    SCORE_CAM_WEIGHTING_CHANNEL_SOFTMAX: _ClassVar[ScoreCamWeighting]
    SCORE_CAM_WEIGHTING_CLASS_PROBABILITY: _ClassVar[ScoreCamWeighting]

class Interpolation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTERPOLATION_UNSPECIFIED: _ClassVar[Interpolation]
    INTERPOLATION_BILINEAR: _ClassVar[Interpolation]
    INTERPOLATION_NEAREST: _ClassVar[Interpolation]

class Normalization(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NORMALIZATION_UNSPECIFIED: _ClassVar[Normalization]
    NORMALIZATION_NONE: _ClassVar[Normalization]
    NORMALIZATION_MAX_ABS: _ClassVar[Normalization]
    NORMALIZATION_MIN_MAX: _ClassVar[Normalization]
METHOD_UNSPECIFIED: Method
METHOD_VANILLA: Method
METHOD_INPUT_X_GRADIENT: Method
METHOD_GRADCAM: Method
METHOD_GRADCAM_PP: Method
METHOD_EIGENCAM: Method
METHOD_INTEGRATED_GRADIENTS: Method
METHOD_SMOOTHGRAD: Method
METHOD_RISE: Method
METHOD_CAM: Method
METHOD_SCORECAM: Method
METHOD_OCCLUSION: Method
METHOD_GUIDED_BACKPROP: Method
METHOD_DECONVNET: Method
METHOD_GUIDED_GRADCAM: Method
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT16: DType
CHANNEL_REDUCTION_UNSPECIFIED: ChannelReduction
CHANNEL_REDUCTION_MAX: ChannelReduction
CHANNEL_REDUCTION_SUM: ChannelReduction
CHANNEL_REDUCTION_L2: ChannelReduction
INTEGRATION_RULE_UNSPECIFIED: IntegrationRule
INTEGRATION_RULE_GAUSS_LEGENDRE: IntegrationRule
INTEGRATION_RULE_RIEMANN_LEFT: IntegrationRule
INTEGRATION_RULE_RIEMANN_RIGHT: IntegrationRule
INTEGRATION_RULE_RIEMANN_MIDDLE: IntegrationRule
INTEGRATION_RULE_RIEMANN_TRAPEZOID: IntegrationRule
BASELINE_UNSPECIFIED: Baseline
BASELINE_ZEROS: Baseline
BASELINE_BLACK: Baseline
BASELINE_BLUR: Baseline
BASELINE_UNIFORM: Baseline
BASELINE_CUSTOM: Baseline
SMOOTH_GRAD_AGGREGATE_UNSPECIFIED: SmoothGradAggregate
SMOOTH_GRAD_AGGREGATE_MEAN: SmoothGradAggregate
SMOOTH_GRAD_AGGREGATE_SQUARE: SmoothGradAggregate
SMOOTH_GRAD_AGGREGATE_VARIANCE: SmoothGradAggregate
SCORE_CAM_WEIGHTING_UNSPECIFIED: ScoreCamWeighting
SCORE_CAM_WEIGHTING_CHANNEL_SOFTMAX: ScoreCamWeighting
SCORE_CAM_WEIGHTING_CLASS_PROBABILITY: ScoreCamWeighting
INTERPOLATION_UNSPECIFIED: Interpolation
INTERPOLATION_BILINEAR: Interpolation
INTERPOLATION_NEAREST: Interpolation
NORMALIZATION_UNSPECIFIED: Normalization
NORMALIZATION_NONE: Normalization
NORMALIZATION_MAX_ABS: Normalization
NORMALIZATION_MIN_MAX: Normalization

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class GradientParams(_message.Message):
    __slots__ = ("reduction",)
    REDUCTION_FIELD_NUMBER: _ClassVar[int]
    reduction: ChannelReduction
    def __init__(self, reduction: _Optional[_Union[ChannelReduction, str]] = ...) -> None: ...

class CamParams(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class IntegratedGradientsParams(_message.Message):
    __slots__ = ("n_steps", "rule", "baseline", "blur_sigma", "seed", "custom_baseline")
    N_STEPS_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    BLUR_SIGMA_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_BASELINE_FIELD_NUMBER: _ClassVar[int]
    n_steps: int
    rule: IntegrationRule
    baseline: Baseline
    blur_sigma: float
    seed: int
    custom_baseline: Tensor
    def __init__(self, n_steps: _Optional[int] = ..., rule: _Optional[_Union[IntegrationRule, str]] = ..., baseline: _Optional[_Union[Baseline, str]] = ..., blur_sigma: _Optional[float] = ..., seed: _Optional[int] = ..., custom_baseline: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class SmoothGradParams(_message.Message):
    __slots__ = ("n_samples", "sigma", "aggregate", "seed", "reduction")
    N_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SIGMA_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    REDUCTION_FIELD_NUMBER: _ClassVar[int]
    n_samples: int
    sigma: float
    aggregate: SmoothGradAggregate
    seed: int
    reduction: ChannelReduction
    def __init__(self, n_samples: _Optional[int] = ..., sigma: _Optional[float] = ..., aggregate: _Optional[_Union[SmoothGradAggregate, str]] = ..., seed: _Optional[int] = ..., reduction: _Optional[_Union[ChannelReduction, str]] = ...) -> None: ...

class RiseParams(_message.Message):
    __slots__ = ("n_masks", "grid_size", "p", "seed")
    N_MASKS_FIELD_NUMBER: _ClassVar[int]
    GRID_SIZE_FIELD_NUMBER: _ClassVar[int]
    P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    n_masks: int
    grid_size: int
    p: float
    seed: int
    def __init__(self, n_masks: _Optional[int] = ..., grid_size: _Optional[int] = ..., p: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class OcclusionParams(_message.Message):
    __slots__ = ("window", "stride", "baseline")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    window: int
    stride: int
    baseline: float
    def __init__(self, window: _Optional[int] = ..., stride: _Optional[int] = ..., baseline: _Optional[float] = ...) -> None: ...

class ScoreCamParams(_message.Message):
    __slots__ = ("max_channels", "weighting")
    MAX_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTING_FIELD_NUMBER: _ClassVar[int]
    max_channels: int
    weighting: ScoreCamWeighting
    def __init__(self, max_channels: _Optional[int] = ..., weighting: _Optional[_Union[ScoreCamWeighting, str]] = ...) -> None: ...

class GuidedBackpropParams(_message.Message):
    __slots__ = ("reduction",)
    REDUCTION_FIELD_NUMBER: _ClassVar[int]
    reduction: ChannelReduction
    def __init__(self, reduction: _Optional[_Union[ChannelReduction, str]] = ...) -> None: ...

class GuidedGradCamParams(_message.Message):
    __slots__ = ("reduction", "interpolation")
    REDUCTION_FIELD_NUMBER: _ClassVar[int]
    INTERPOLATION_FIELD_NUMBER: _ClassVar[int]
    reduction: ChannelReduction
    interpolation: Interpolation
    def __init__(self, reduction: _Optional[_Union[ChannelReduction, str]] = ..., interpolation: _Optional[_Union[Interpolation, str]] = ...) -> None: ...

class MethodRequest(_message.Message):
    __slots__ = ("method", "gradient", "cam", "integrated_gradients", "smoothgrad", "rise", "occlusion", "scorecam", "guided_backprop", "guided_gradcam")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_FIELD_NUMBER: _ClassVar[int]
    CAM_FIELD_NUMBER: _ClassVar[int]
    INTEGRATED_GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    SMOOTHGRAD_FIELD_NUMBER: _ClassVar[int]
    RISE_FIELD_NUMBER: _ClassVar[int]
    OCCLUSION_FIELD_NUMBER: _ClassVar[int]
    SCORECAM_FIELD_NUMBER: _ClassVar[int]
    GUIDED_BACKPROP_FIELD_NUMBER: _ClassVar[int]
    GUIDED_GRADCAM_FIELD_NUMBER: _ClassVar[int]
    method: Method
    gradient: GradientParams
    cam: CamParams
    integrated_gradients: IntegratedGradientsParams
    smoothgrad: SmoothGradParams
    rise: RiseParams
    occlusion: OcclusionParams
    scorecam: ScoreCamParams
    guided_backprop: GuidedBackpropParams
    guided_gradcam: GuidedGradCamParams
    def __init__(self, method: _Optional[_Union[Method, str]] = ..., gradient: _Optional[_Union[GradientParams, _Mapping]] = ..., cam: _Optional[_Union[CamParams, _Mapping]] = ..., integrated_gradients: _Optional[_Union[IntegratedGradientsParams, _Mapping]] = ..., smoothgrad: _Optional[_Union[SmoothGradParams, _Mapping]] = ..., rise: _Optional[_Union[RiseParams, _Mapping]] = ..., occlusion: _Optional[_Union[OcclusionParams, _Mapping]] = ..., scorecam: _Optional[_Union[ScoreCamParams, _Mapping]] = ..., guided_backprop: _Optional[_Union[GuidedBackpropParams, _Mapping]] = ..., guided_gradcam: _Optional[_Union[GuidedGradCamParams, _Mapping]] = ...) -> None: ...

class ClassList(_message.Message):
    __slots__ = ("indices",)
    INDICES_FIELD_NUMBER: _ClassVar[int]
    indices: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, indices: _Optional[_Iterable[int]] = ...) -> None: ...

class Targets(_message.Message):
    __slots__ = ("top_k", "classes")
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    top_k: int
    classes: ClassList
    def __init__(self, top_k: _Optional[int] = ..., classes: _Optional[_Union[ClassList, _Mapping]] = ...) -> None: ...

class OutputOptions(_message.Message):
    __slots__ = ("map_dtype", "normalization", "include_overlay", "top_predictions")
    MAP_DTYPE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZATION_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_OVERLAY_FIELD_NUMBER: _ClassVar[int]
    TOP_PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    map_dtype: DType
    normalization: Normalization
    include_overlay: bool
    top_predictions: int
    def __init__(self, map_dtype: _Optional[_Union[DType, str]] = ..., normalization: _Optional[_Union[Normalization, str]] = ..., include_overlay: _Optional[bool] = ..., top_predictions: _Optional[int] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("model", "image", "tensor", "targets", "methods", "output", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    image: bytes
    tensor: Tensor
    targets: Targets
    methods: _containers.RepeatedCompositeFieldContainer[MethodRequest]
    output: OutputOptions
    request_id: str
    def __init__(self, model: _Optional[str] = ..., image: _Optional[bytes] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ..., targets: _Optional[_Union[Targets, _Mapping]] = ..., methods: _Optional[_Iterable[_Union[MethodRequest, _Mapping]]] = ..., output: _Optional[_Union[OutputOptions, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("class_index", "label", "logit", "probability")
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LOGIT_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    class_index: int
    label: str
    logit: float
    probability: float
    def __init__(self, class_index: _Optional[int] = ..., label: _Optional[str] = ..., logit: _Optional[float] = ..., probability: _Optional[float] = ...) -> None: ...

class Attribution(_message.Message):
    __slots__ = ("method", "target", "map", "overlay_png", "stats", "queue_ms", "compute_ms")
    class StatsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_PNG_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    method: Method
    target: int
    map: Tensor
    overlay_png: bytes
    stats: _containers.ScalarMap[str, float]
    queue_ms: float
    compute_ms: float
    def __init__(self, method: _Optional[_Union[Method, str]] = ..., target: _Optional[int] = ..., map: _Optional[_Union[Tensor, _Mapping]] = ..., overlay_png: _Optional[bytes] = ..., stats: _Optional[_Mapping[str, float]] = ..., queue_ms: _Optional[float] = ..., compute_ms: _Optional[float] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("model", "request_id", "predictions", "targets", "attributions")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    request_id: str
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    targets: _containers.RepeatedScalarFieldContainer[int]
    attributions: _containers.RepeatedCompositeFieldContainer[Attribution]
    def __init__(self, model: _Optional[str] = ..., request_id: _Optional[str] = ..., predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., targets: _Optional[_Iterable[int]] = ..., attributions: _Optional[_Iterable[_Union[Attribution, _Mapping]]] = ...) -> None: ...

class ExplainEvent(_message.Message):
    __slots__ = ("prediction", "attribution")
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    prediction: ExplainResponse
    attribution: Attribution
    def __init__(self, prediction: _Optional[_Union[ExplainResponse, _Mapping]] = ..., attribution: _Optional[_Union[Attribution, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ParameterInfo(_message.Message):
    __slots__ = ("name", "type", "default_value", "minimum", "maximum", "choices")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    default_value: str
    minimum: float
    maximum: float
    choices: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., default_value: _Optional[str] = ..., minimum: _Optional[float] = ..., maximum: _Optional[float] = ..., choices: _Optional[_Iterable[str]] = ...) -> None: ...

class MethodInfo(_message.Message):
    __slots__ = ("method", "name", "kind", "summary", "parameters")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    method: Method
    name: str
    kind: str
    summary: str
    parameters: _containers.RepeatedCompositeFieldContainer[ParameterInfo]
    def __init__(self, method: _Optional[_Union[Method, str]] = ..., name: _Optional[str] = ..., kind: _Optional[str] = ..., summary: _Optional[str] = ..., parameters: _Optional[_Iterable[_Union[ParameterInfo, _Mapping]]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "description", "height", "width", "channels", "mean", "std", "num_classes", "methods", "max_targets")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    MAX_TARGETS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    height: int
    width: int
    channels: int
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    num_classes: int
    methods: _containers.RepeatedCompositeFieldContainer[MethodInfo]
    max_targets: int
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., num_classes: _Optional[int] = ..., methods: _Optional[_Iterable[_Union[MethodInfo, _Mapping]]] = ..., max_targets: _Optional[int] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...
