"""genbench: an experiment-tracked benchmark suite for GANs and VAEs. From Python: `bench.evaluate` (score samples,
as `bench eval --json`) and `bench.run_suite` (as `bench run`), in bench.api; imported on first use, so the command
line does not pay for torch before it needs it."""

__all__ = ["evaluate", "run_suite"]


def __getattr__(name: str):
    if name in __all__:
        from bench import api

        return getattr(api, name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
