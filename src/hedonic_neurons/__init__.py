"""hedonic-neurons: coalitions of cooperating MLP neurons, found with hedonic games.

The pipeline (one subpackage per stage):

    data -> models -> neurons -> synergy (phi) -> game / baselines -> tracking -> evaluate -> report
"""

__version__ = "0.1.0"
