"""shadowroute: shadow-deploy ML models on real traffic and get evidence-backed verdicts."""

from shadowroute.build_info import install_pure_finder

__version__ = "0.1.0"
__all__ = ["__version__"]

install_pure_finder()
