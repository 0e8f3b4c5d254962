from .fused_label_smoothed_cross_entropy import FusedLabelSmoothedCrossEntropyCriterion, fused_linear_label_smoothed_nll
from .sequence_risk import SequenceRiskConfig, SequenceRiskCriterion, expected_risk

__all__ = [
    "FusedLabelSmoothedCrossEntropyCriterion",
    "fused_linear_label_smoothed_nll",
    "SequenceRiskConfig",
    "SequenceRiskCriterion",
    "expected_risk",
]
