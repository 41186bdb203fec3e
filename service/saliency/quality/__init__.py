"""Faithfulness of saliency maps: quality metrics, sanity checks and the SLO-aware policy.

One job per module (docs/faithfulness.md has the design and the numbers):

| module | job |
|---|---|
| `similarity` | map-vs-map numbers: Spearman, top-k% IoU, SSIM, HOG similarity (pure numpy) |
| `curves` | deletion / insertion curves as forward-only sample streams on the chunk executor |
| `evaluate` | the `evaluate` request option: which metrics apply, and the scores of one response |
| `sanity` | model-randomisation checks (cascading, independent) on a copy of the model |
| `data_randomisation` | tinycnn trained on scikit-learn's digits with true and shuffled labels |
| `invariance` | input invariance: a constant shift absorbed into the first layer |
| `policy` | latency budgets (IG step count, fallbacks) and `explain_if` |
| `report` / `plots` | `saliency report sanity`: the Markdown table and Pillow plots |
| `digits` | tinycnn / tinyvit trained on the digits, deterministically, weights cached by content hash (`tinyvit_digits`) |
| `roar` | ROAR / KAR (Hooker et al. 2019): remove pixels by each map, retrain from scratch, test accuracy |
| `trained_vit` | the trained ViT's sanity checks and attention-vs-gradient agreement |
| `roar_report` / `roar_cli` | `saliency report roar`: docs/roar/report.md, roar.json, the matplotlib plot |

Dependency direction: `quality` uses `attribution` and `models`; `runtime` and `api` use
`quality`; nothing here knows protobuf or gRPC.
"""
