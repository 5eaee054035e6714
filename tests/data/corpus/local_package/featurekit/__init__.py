"""featurekit: the feature engineering shared by our churn models."""

from featurekit.transforms import NUMERIC, add_ratios

__all__ = ["NUMERIC", "add_ratios"]
