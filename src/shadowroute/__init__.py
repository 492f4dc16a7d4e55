"""shadowroute: shadow-deploy ML models on real traffic and get evidence-backed verdicts."""

__version__ = "0.1.0"
__all__ = ["__version__"]
