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
    METHOD_DEEPLIFT: _ClassVar[Method]
    METHOD_LRP: _ClassVar[Method]
    METHOD_GRADIENT_SHAP: _ClassVar[Method]
    METHOD_XRAI: _ClassVar[Method]
    METHOD_KERNEL_SHAP: _ClassVar[Method]
    METHOD_LIME: _ClassVar[Method]
    METHOD_ATTENTION_ROLLOUT: _ClassVar[Method]
    METHOD_RAW_ATTENTION: _ClassVar[Method]

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

class LrpRule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LRP_RULE_UNSPECIFIED: _ClassVar[LrpRule]
    LRP_RULE_EPSILON: _ClassVar[LrpRule]
    LRP_RULE_GAMMA: _ClassVar[LrpRule]
    LRP_RULE_ALPHA1_BETA0: _ClassVar[LrpRule]
    LRP_RULE_ALPHA2_BETA1: _ClassVar[LrpRule]

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

class AttentionHeadFusion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ATTENTION_HEAD_FUSION_UNSPECIFIED: _ClassVar[AttentionHeadFusion]
    ATTENTION_HEAD_FUSION_MEAN: _ClassVar[AttentionHeadFusion]
    ATTENTION_HEAD_FUSION_MAX: _ClassVar[AttentionHeadFusion]
    ATTENTION_HEAD_FUSION_MIN: _ClassVar[AttentionHeadFusion]

class SuperpixelBaseline(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUPERPIXEL_BASELINE_UNSPECIFIED: _ClassVar[SuperpixelBaseline]
    SUPERPIXEL_BASELINE_ZEROS: _ClassVar[SuperpixelBaseline]
    SUPERPIXEL_BASELINE_MEAN: _ClassVar[SuperpixelBaseline]
    SUPERPIXEL_BASELINE_SEGMENT_MEAN: _ClassVar[SuperpixelBaseline]
    SUPERPIXEL_BASELINE_BLUR: _ClassVar[SuperpixelBaseline]

class ReferenceSet(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REFERENCE_SET_UNSPECIFIED: _ClassVar[ReferenceSet]
    REFERENCE_SET_PHOTOS: _ClassVar[ReferenceSet]
    REFERENCE_SET_UNIFORM: _ClassVar[ReferenceSet]
    REFERENCE_SET_BLACK_WHITE: _ClassVar[ReferenceSet]
    REFERENCE_SET_CUSTOM: _ClassVar[ReferenceSet]

class XraiBaseline(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    XRAI_BASELINE_UNSPECIFIED: _ClassVar[XraiBaseline]
    XRAI_BASELINE_BLACK_WHITE: _ClassVar[XraiBaseline]
    XRAI_BASELINE_BLACK: _ClassVar[XraiBaseline]
    XRAI_BASELINE_ZEROS: _ClassVar[XraiBaseline]

class Normalization(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NORMALIZATION_UNSPECIFIED: _ClassVar[Normalization]
    NORMALIZATION_NONE: _ClassVar[Normalization]
    NORMALIZATION_MAX_ABS: _ClassVar[Normalization]
    NORMALIZATION_MIN_MAX: _ClassVar[Normalization]

class MapSize(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MAP_SIZE_UNSPECIFIED: _ClassVar[MapSize]
    MAP_SIZE_INPUT: _ClassVar[MapSize]
    MAP_SIZE_ORIGINAL: _ClassVar[MapSize]

class QualityMetric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUALITY_METRIC_UNSPECIFIED: _ClassVar[QualityMetric]
    QUALITY_METRIC_DELETION: _ClassVar[QualityMetric]
    QUALITY_METRIC_INSERTION: _ClassVar[QualityMetric]
    QUALITY_METRIC_POINTING_GAME: _ClassVar[QualityMetric]
    QUALITY_METRIC_AGREEMENT: _ClassVar[QualityMetric]
    QUALITY_METRIC_CONTRAST: _ClassVar[QualityMetric]
    QUALITY_METRIC_COMPLETENESS: _ClassVar[QualityMetric]
    QUALITY_METRIC_MAP_ERROR: _ClassVar[QualityMetric]

class Randomization(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RANDOMIZATION_UNSPECIFIED: _ClassVar[Randomization]
    RANDOMIZATION_CASCADING: _ClassVar[Randomization]
    RANDOMIZATION_INDEPENDENT: _ClassVar[Randomization]
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
METHOD_DEEPLIFT: Method
METHOD_LRP: Method
METHOD_GRADIENT_SHAP: Method
METHOD_XRAI: Method
METHOD_KERNEL_SHAP: Method
METHOD_LIME: Method
METHOD_ATTENTION_ROLLOUT: Method
METHOD_RAW_ATTENTION: Method
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
LRP_RULE_UNSPECIFIED: LrpRule
LRP_RULE_EPSILON: LrpRule
LRP_RULE_GAMMA: LrpRule
LRP_RULE_ALPHA1_BETA0: LrpRule
LRP_RULE_ALPHA2_BETA1: LrpRule
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
ATTENTION_HEAD_FUSION_UNSPECIFIED: AttentionHeadFusion
ATTENTION_HEAD_FUSION_MEAN: AttentionHeadFusion
ATTENTION_HEAD_FUSION_MAX: AttentionHeadFusion
ATTENTION_HEAD_FUSION_MIN: AttentionHeadFusion
SUPERPIXEL_BASELINE_UNSPECIFIED: SuperpixelBaseline
SUPERPIXEL_BASELINE_ZEROS: SuperpixelBaseline
SUPERPIXEL_BASELINE_MEAN: SuperpixelBaseline
SUPERPIXEL_BASELINE_SEGMENT_MEAN: SuperpixelBaseline
SUPERPIXEL_BASELINE_BLUR: SuperpixelBaseline
REFERENCE_SET_UNSPECIFIED: ReferenceSet
REFERENCE_SET_PHOTOS: ReferenceSet
REFERENCE_SET_UNIFORM: ReferenceSet
REFERENCE_SET_BLACK_WHITE: ReferenceSet
REFERENCE_SET_CUSTOM: ReferenceSet
XRAI_BASELINE_UNSPECIFIED: XraiBaseline
XRAI_BASELINE_BLACK_WHITE: XraiBaseline
XRAI_BASELINE_BLACK: XraiBaseline
XRAI_BASELINE_ZEROS: XraiBaseline
NORMALIZATION_UNSPECIFIED: Normalization
NORMALIZATION_NONE: Normalization
NORMALIZATION_MAX_ABS: Normalization
NORMALIZATION_MIN_MAX: Normalization
MAP_SIZE_UNSPECIFIED: MapSize
MAP_SIZE_INPUT: MapSize
MAP_SIZE_ORIGINAL: MapSize
QUALITY_METRIC_UNSPECIFIED: QualityMetric
QUALITY_METRIC_DELETION: QualityMetric
QUALITY_METRIC_INSERTION: QualityMetric
QUALITY_METRIC_POINTING_GAME: QualityMetric
QUALITY_METRIC_AGREEMENT: QualityMetric
QUALITY_METRIC_CONTRAST: QualityMetric
QUALITY_METRIC_COMPLETENESS: QualityMetric
QUALITY_METRIC_MAP_ERROR: QualityMetric
RANDOMIZATION_UNSPECIFIED: Randomization
RANDOMIZATION_CASCADING: Randomization
RANDOMIZATION_INDEPENDENT: Randomization

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
    __slots__ = ("n_steps", "rule", "baseline", "blur_sigma", "seed", "custom_baseline", "max_map_error")
    N_STEPS_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    BLUR_SIGMA_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_BASELINE_FIELD_NUMBER: _ClassVar[int]
    MAX_MAP_ERROR_FIELD_NUMBER: _ClassVar[int]
    n_steps: int
    rule: IntegrationRule
    baseline: Baseline
    blur_sigma: float
    seed: int
    custom_baseline: Tensor
    max_map_error: float
    def __init__(self, n_steps: _Optional[int] = ..., rule: _Optional[_Union[IntegrationRule, str]] = ..., baseline: _Optional[_Union[Baseline, str]] = ..., blur_sigma: _Optional[float] = ..., seed: _Optional[int] = ..., custom_baseline: _Optional[_Union[Tensor, _Mapping]] = ..., max_map_error: _Optional[float] = ...) -> None: ...

class DeepLiftParams(_message.Message):
    __slots__ = ("baseline", "blur_sigma", "seed", "custom_baseline")
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    BLUR_SIGMA_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_BASELINE_FIELD_NUMBER: _ClassVar[int]
    baseline: Baseline
    blur_sigma: float
    seed: int
    custom_baseline: Tensor
    def __init__(self, baseline: _Optional[_Union[Baseline, str]] = ..., blur_sigma: _Optional[float] = ..., seed: _Optional[int] = ..., custom_baseline: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class LrpParams(_message.Message):
    __slots__ = ("rule", "epsilon", "gamma")
    RULE_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    rule: LrpRule
    epsilon: float
    gamma: float
    def __init__(self, rule: _Optional[_Union[LrpRule, str]] = ..., epsilon: _Optional[float] = ..., gamma: _Optional[float] = ...) -> None: ...

class SmoothGradParams(_message.Message):
    __slots__ = ("n_samples", "sigma", "aggregate", "seed", "reduction", "max_map_error")
    N_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SIGMA_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    REDUCTION_FIELD_NUMBER: _ClassVar[int]
    MAX_MAP_ERROR_FIELD_NUMBER: _ClassVar[int]
    n_samples: int
    sigma: float
    aggregate: SmoothGradAggregate
    seed: int
    reduction: ChannelReduction
    max_map_error: float
    def __init__(self, n_samples: _Optional[int] = ..., sigma: _Optional[float] = ..., aggregate: _Optional[_Union[SmoothGradAggregate, str]] = ..., seed: _Optional[int] = ..., reduction: _Optional[_Union[ChannelReduction, str]] = ..., max_map_error: _Optional[float] = ...) -> None: ...

class RiseParams(_message.Message):
    __slots__ = ("n_masks", "grid_size", "p", "seed", "max_map_error")
    N_MASKS_FIELD_NUMBER: _ClassVar[int]
    GRID_SIZE_FIELD_NUMBER: _ClassVar[int]
    P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_MAP_ERROR_FIELD_NUMBER: _ClassVar[int]
    n_masks: int
    grid_size: int
    p: float
    seed: int
    max_map_error: float
    def __init__(self, n_masks: _Optional[int] = ..., grid_size: _Optional[int] = ..., p: _Optional[float] = ..., seed: _Optional[int] = ..., max_map_error: _Optional[float] = ...) -> None: ...

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

class AttentionParams(_message.Message):
    __slots__ = ("head_fusion", "discard_ratio", "layer")
    HEAD_FUSION_FIELD_NUMBER: _ClassVar[int]
    DISCARD_RATIO_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    head_fusion: AttentionHeadFusion
    discard_ratio: float
    layer: int
    def __init__(self, head_fusion: _Optional[_Union[AttentionHeadFusion, str]] = ..., discard_ratio: _Optional[float] = ..., layer: _Optional[int] = ...) -> None: ...

class KernelShapParams(_message.Message):
    __slots__ = ("n_samples", "n_segments", "compactness", "baseline", "blur_sigma", "seed", "max_map_error")
    N_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    N_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    COMPACTNESS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    BLUR_SIGMA_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_MAP_ERROR_FIELD_NUMBER: _ClassVar[int]
    n_samples: int
    n_segments: int
    compactness: float
    baseline: SuperpixelBaseline
    blur_sigma: float
    seed: int
    max_map_error: float
    def __init__(self, n_samples: _Optional[int] = ..., n_segments: _Optional[int] = ..., compactness: _Optional[float] = ..., baseline: _Optional[_Union[SuperpixelBaseline, str]] = ..., blur_sigma: _Optional[float] = ..., seed: _Optional[int] = ..., max_map_error: _Optional[float] = ...) -> None: ...

class LimeParams(_message.Message):
    __slots__ = ("n_samples", "n_segments", "compactness", "baseline", "blur_sigma", "seed", "kernel_width", "alpha", "max_map_error")
    N_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    N_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    COMPACTNESS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    BLUR_SIGMA_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    KERNEL_WIDTH_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    MAX_MAP_ERROR_FIELD_NUMBER: _ClassVar[int]
    n_samples: int
    n_segments: int
    compactness: float
    baseline: SuperpixelBaseline
    blur_sigma: float
    seed: int
    kernel_width: float
    alpha: float
    max_map_error: float
    def __init__(self, n_samples: _Optional[int] = ..., n_segments: _Optional[int] = ..., compactness: _Optional[float] = ..., baseline: _Optional[_Union[SuperpixelBaseline, str]] = ..., blur_sigma: _Optional[float] = ..., seed: _Optional[int] = ..., kernel_width: _Optional[float] = ..., alpha: _Optional[float] = ..., max_map_error: _Optional[float] = ...) -> None: ...

class GradientShapParams(_message.Message):
    __slots__ = ("n_samples", "stdev", "reference", "seed", "custom_reference", "max_map_error")
    N_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    STDEV_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    MAX_MAP_ERROR_FIELD_NUMBER: _ClassVar[int]
    n_samples: int
    stdev: float
    reference: ReferenceSet
    seed: int
    custom_reference: Tensor
    max_map_error: float
    def __init__(self, n_samples: _Optional[int] = ..., stdev: _Optional[float] = ..., reference: _Optional[_Union[ReferenceSet, str]] = ..., seed: _Optional[int] = ..., custom_reference: _Optional[_Union[Tensor, _Mapping]] = ..., max_map_error: _Optional[float] = ...) -> None: ...

class XraiParams(_message.Message):
    __slots__ = ("n_steps", "baseline", "area_threshold", "min_region_area")
    N_STEPS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    AREA_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MIN_REGION_AREA_FIELD_NUMBER: _ClassVar[int]
    n_steps: int
    baseline: XraiBaseline
    area_threshold: float
    min_region_area: float
    def __init__(self, n_steps: _Optional[int] = ..., baseline: _Optional[_Union[XraiBaseline, str]] = ..., area_threshold: _Optional[float] = ..., min_region_area: _Optional[float] = ...) -> None: ...

class MethodRequest(_message.Message):
    __slots__ = ("method", "gradient", "cam", "integrated_gradients", "smoothgrad", "rise", "occlusion", "scorecam", "guided_backprop", "guided_gradcam", "deeplift", "lrp", "gradient_shap", "xrai", "kernel_shap", "lime", "attention")
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
    DEEPLIFT_FIELD_NUMBER: _ClassVar[int]
    LRP_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_SHAP_FIELD_NUMBER: _ClassVar[int]
    XRAI_FIELD_NUMBER: _ClassVar[int]
    KERNEL_SHAP_FIELD_NUMBER: _ClassVar[int]
    LIME_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
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
    deeplift: DeepLiftParams
    lrp: LrpParams
    gradient_shap: GradientShapParams
    xrai: XraiParams
    kernel_shap: KernelShapParams
    lime: LimeParams
    attention: AttentionParams
    def __init__(self, method: _Optional[_Union[Method, str]] = ..., gradient: _Optional[_Union[GradientParams, _Mapping]] = ..., cam: _Optional[_Union[CamParams, _Mapping]] = ..., integrated_gradients: _Optional[_Union[IntegratedGradientsParams, _Mapping]] = ..., smoothgrad: _Optional[_Union[SmoothGradParams, _Mapping]] = ..., rise: _Optional[_Union[RiseParams, _Mapping]] = ..., occlusion: _Optional[_Union[OcclusionParams, _Mapping]] = ..., scorecam: _Optional[_Union[ScoreCamParams, _Mapping]] = ..., guided_backprop: _Optional[_Union[GuidedBackpropParams, _Mapping]] = ..., guided_gradcam: _Optional[_Union[GuidedGradCamParams, _Mapping]] = ..., deeplift: _Optional[_Union[DeepLiftParams, _Mapping]] = ..., lrp: _Optional[_Union[LrpParams, _Mapping]] = ..., gradient_shap: _Optional[_Union[GradientShapParams, _Mapping]] = ..., xrai: _Optional[_Union[XraiParams, _Mapping]] = ..., kernel_shap: _Optional[_Union[KernelShapParams, _Mapping]] = ..., lime: _Optional[_Union[LimeParams, _Mapping]] = ..., attention: _Optional[_Union[AttentionParams, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("map_dtype", "normalization", "include_overlay", "top_predictions", "map_size")
    MAP_DTYPE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZATION_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_OVERLAY_FIELD_NUMBER: _ClassVar[int]
    TOP_PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    MAP_SIZE_FIELD_NUMBER: _ClassVar[int]
    map_dtype: DType
    normalization: Normalization
    include_overlay: bool
    top_predictions: int
    map_size: MapSize
    def __init__(self, map_dtype: _Optional[_Union[DType, str]] = ..., normalization: _Optional[_Union[Normalization, str]] = ..., include_overlay: _Optional[bool] = ..., top_predictions: _Optional[int] = ..., map_size: _Optional[_Union[MapSize, str]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("model", "image", "tensor", "targets", "methods", "output", "request_id", "evaluate", "latency_budget_ms", "completeness_target", "explain_if")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    COMPLETENESS_TARGET_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_IF_FIELD_NUMBER: _ClassVar[int]
    model: str
    image: bytes
    tensor: Tensor
    targets: Targets
    methods: _containers.RepeatedCompositeFieldContainer[MethodRequest]
    output: OutputOptions
    request_id: str
    evaluate: EvaluateOptions
    latency_budget_ms: float
    completeness_target: float
    explain_if: ExplainCondition
    def __init__(self, model: _Optional[str] = ..., image: _Optional[bytes] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ..., targets: _Optional[_Union[Targets, _Mapping]] = ..., methods: _Optional[_Iterable[_Union[MethodRequest, _Mapping]]] = ..., output: _Optional[_Union[OutputOptions, _Mapping]] = ..., request_id: _Optional[str] = ..., evaluate: _Optional[_Union[EvaluateOptions, _Mapping]] = ..., latency_budget_ms: _Optional[float] = ..., completeness_target: _Optional[float] = ..., explain_if: _Optional[_Union[ExplainCondition, _Mapping]] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x_min", "y_min", "x_max", "y_max")
    X_MIN_FIELD_NUMBER: _ClassVar[int]
    Y_MIN_FIELD_NUMBER: _ClassVar[int]
    X_MAX_FIELD_NUMBER: _ClassVar[int]
    Y_MAX_FIELD_NUMBER: _ClassVar[int]
    x_min: float
    y_min: float
    x_max: float
    y_max: float
    def __init__(self, x_min: _Optional[float] = ..., y_min: _Optional[float] = ..., x_max: _Optional[float] = ..., y_max: _Optional[float] = ...) -> None: ...

class GroundTruth(_message.Message):
    __slots__ = ("box", "mask")
    BOX_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    box: Box
    mask: Tensor
    def __init__(self, box: _Optional[_Union[Box, _Mapping]] = ..., mask: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class EvaluateOptions(_message.Message):
    __slots__ = ("metrics", "perturbation_steps", "top_fraction", "ground_truth", "pointing_tolerance")
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PERTURBATION_STEPS_FIELD_NUMBER: _ClassVar[int]
    TOP_FRACTION_FIELD_NUMBER: _ClassVar[int]
    GROUND_TRUTH_FIELD_NUMBER: _ClassVar[int]
    POINTING_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.RepeatedScalarFieldContainer[QualityMetric]
    perturbation_steps: int
    top_fraction: float
    ground_truth: GroundTruth
    pointing_tolerance: int
    def __init__(self, metrics: _Optional[_Iterable[_Union[QualityMetric, str]]] = ..., perturbation_steps: _Optional[int] = ..., top_fraction: _Optional[float] = ..., ground_truth: _Optional[_Union[GroundTruth, _Mapping]] = ..., pointing_tolerance: _Optional[int] = ...) -> None: ...

class ExplainCondition(_message.Message):
    __slots__ = ("margin_below", "probability_below")
    MARGIN_BELOW_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_BELOW_FIELD_NUMBER: _ClassVar[int]
    margin_below: float
    probability_below: float
    def __init__(self, margin_below: _Optional[float] = ..., probability_below: _Optional[float] = ...) -> None: ...

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
    __slots__ = ("method", "target", "map", "overlay_png", "stats", "queue_ms", "compute_ms", "region", "cached")
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
    REGION_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    method: Method
    target: int
    map: Tensor
    overlay_png: bytes
    stats: _containers.ScalarMap[str, float]
    queue_ms: float
    compute_ms: float
    region: Box
    cached: bool
    def __init__(self, method: _Optional[_Union[Method, str]] = ..., target: _Optional[int] = ..., map: _Optional[_Union[Tensor, _Mapping]] = ..., overlay_png: _Optional[bytes] = ..., stats: _Optional[_Mapping[str, float]] = ..., queue_ms: _Optional[float] = ..., compute_ms: _Optional[float] = ..., region: _Optional[_Union[Box, _Mapping]] = ..., cached: _Optional[bool] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("model", "request_id", "predictions", "targets", "attributions", "quality", "policy")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    model: str
    request_id: str
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    targets: _containers.RepeatedScalarFieldContainer[int]
    attributions: _containers.RepeatedCompositeFieldContainer[Attribution]
    quality: _containers.RepeatedCompositeFieldContainer[QualityScore]
    policy: PolicyDecision
    def __init__(self, model: _Optional[str] = ..., request_id: _Optional[str] = ..., predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., targets: _Optional[_Iterable[int]] = ..., attributions: _Optional[_Iterable[_Union[Attribution, _Mapping]]] = ..., quality: _Optional[_Iterable[_Union[QualityScore, _Mapping]]] = ..., policy: _Optional[_Union[PolicyDecision, _Mapping]] = ...) -> None: ...

class QualityScore(_message.Message):
    __slots__ = ("metric", "method", "target", "value", "other_method", "other_target")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    OTHER_METHOD_FIELD_NUMBER: _ClassVar[int]
    OTHER_TARGET_FIELD_NUMBER: _ClassVar[int]
    metric: str
    method: Method
    target: int
    value: float
    other_method: Method
    other_target: int
    def __init__(self, metric: _Optional[str] = ..., method: _Optional[_Union[Method, str]] = ..., target: _Optional[int] = ..., value: _Optional[float] = ..., other_method: _Optional[_Union[Method, str]] = ..., other_target: _Optional[int] = ...) -> None: ...

class QualityReport(_message.Message):
    __slots__ = ("scores",)
    SCORES_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[QualityScore]
    def __init__(self, scores: _Optional[_Iterable[_Union[QualityScore, _Mapping]]] = ...) -> None: ...

class MethodChoice(_message.Message):
    __slots__ = ("requested", "chosen", "reason", "n_steps", "completeness_error", "target")
    REQUESTED_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    N_STEPS_FIELD_NUMBER: _ClassVar[int]
    COMPLETENESS_ERROR_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    requested: Method
    chosen: Method
    reason: str
    n_steps: int
    completeness_error: float
    target: int
    def __init__(self, requested: _Optional[_Union[Method, str]] = ..., chosen: _Optional[_Union[Method, str]] = ..., reason: _Optional[str] = ..., n_steps: _Optional[int] = ..., completeness_error: _Optional[float] = ..., target: _Optional[int] = ...) -> None: ...

class PolicyDecision(_message.Message):
    __slots__ = ("deep_maps", "reason", "choices", "budget_ms", "sample_ms")
    DEEP_MAPS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_MS_FIELD_NUMBER: _ClassVar[int]
    deep_maps: bool
    reason: str
    choices: _containers.RepeatedCompositeFieldContainer[MethodChoice]
    budget_ms: float
    sample_ms: float
    def __init__(self, deep_maps: _Optional[bool] = ..., reason: _Optional[str] = ..., choices: _Optional[_Iterable[_Union[MethodChoice, _Mapping]]] = ..., budget_ms: _Optional[float] = ..., sample_ms: _Optional[float] = ...) -> None: ...

class ExplainEvent(_message.Message):
    __slots__ = ("prediction", "attribution", "policy", "quality")
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    prediction: ExplainResponse
    attribution: Attribution
    policy: PolicyDecision
    quality: QualityReport
    def __init__(self, prediction: _Optional[_Union[ExplainResponse, _Mapping]] = ..., attribution: _Optional[_Union[Attribution, _Mapping]] = ..., policy: _Optional[_Union[PolicyDecision, _Mapping]] = ..., quality: _Optional[_Union[QualityReport, _Mapping]] = ...) -> None: ...

class SanityCheckRequest(_message.Message):
    __slots__ = ("model", "image", "tensor", "methods", "layers", "randomizations", "target", "seed")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    RANDOMIZATIONS_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    model: str
    image: bytes
    tensor: Tensor
    methods: _containers.RepeatedCompositeFieldContainer[MethodRequest]
    layers: _containers.RepeatedScalarFieldContainer[str]
    randomizations: _containers.RepeatedScalarFieldContainer[Randomization]
    target: int
    seed: int
    def __init__(self, model: _Optional[str] = ..., image: _Optional[bytes] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ..., methods: _Optional[_Iterable[_Union[MethodRequest, _Mapping]]] = ..., layers: _Optional[_Iterable[str]] = ..., randomizations: _Optional[_Iterable[_Union[Randomization, str]]] = ..., target: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class LayerSimilarity(_message.Message):
    __slots__ = ("randomization", "layer", "method", "spearman_abs", "spearman_signed", "ssim", "hog")
    RANDOMIZATION_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SPEARMAN_ABS_FIELD_NUMBER: _ClassVar[int]
    SPEARMAN_SIGNED_FIELD_NUMBER: _ClassVar[int]
    SSIM_FIELD_NUMBER: _ClassVar[int]
    HOG_FIELD_NUMBER: _ClassVar[int]
    randomization: Randomization
    layer: str
    method: Method
    spearman_abs: float
    spearman_signed: float
    ssim: float
    hog: float
    def __init__(self, randomization: _Optional[_Union[Randomization, str]] = ..., layer: _Optional[str] = ..., method: _Optional[_Union[Method, str]] = ..., spearman_abs: _Optional[float] = ..., spearman_signed: _Optional[float] = ..., ssim: _Optional[float] = ..., hog: _Optional[float] = ...) -> None: ...

class SanityCheckResponse(_message.Message):
    __slots__ = ("model", "target", "layers", "similarities", "weights_sha256")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    SIMILARITIES_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    model: str
    target: int
    layers: _containers.RepeatedScalarFieldContainer[str]
    similarities: _containers.RepeatedCompositeFieldContainer[LayerSimilarity]
    weights_sha256: str
    def __init__(self, model: _Optional[str] = ..., target: _Optional[int] = ..., layers: _Optional[_Iterable[str]] = ..., similarities: _Optional[_Iterable[_Union[LayerSimilarity, _Mapping]]] = ..., weights_sha256: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("name", "description", "height", "width", "channels", "mean", "std", "num_classes", "methods", "max_targets", "pretrained", "architecture", "resize")
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
    PRETRAINED_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
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
    pretrained: bool
    architecture: str
    resize: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., num_classes: _Optional[int] = ..., methods: _Optional[_Iterable[_Union[MethodInfo, _Mapping]]] = ..., max_targets: _Optional[int] = ..., pretrained: _Optional[bool] = ..., architecture: _Optional[str] = ..., resize: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...
