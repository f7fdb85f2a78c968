"""A local stand-in for WeChat's jscode2session API, for development, tests and benchmarks."""

from emulator.app import init_app

__all__ = ["init_app"]
