from .sequence_risk import SequenceRiskConfig, SequenceRiskCriterion, expected_risk

__all__ = ["SequenceRiskConfig", "SequenceRiskCriterion", "expected_risk"]
