"""System metrics of a cell's run: CPU, memory, disk, network and, on a CUDA machine with the `gpu` extra, each GPU's
utilisation and memory, sampled by genbench's own thread (psutil, NVML) and logged as system/* through MlflowClient's
public log_batch, under the names MLflow's UI charts (system/cpu_utilization_percentage, ...).

A resumed run continues the steps where its previous attempt stopped. The sampler stops logging when the cell's
lease is lost (another process then holds the run), and it never fails a cell: a sample or a batch that cannot be
taken or logged is counted and skipped.
"""

from __future__ import annotations

import threading
import time

MB = 1024**2


class SystemMetrics:
    """A daemon thread that logs one sample every `interval` s from start() to stop(); `fence()` returns a reason
    when the run is no longer this process's (the lease's `lost`), and sampling then stops."""

    def __init__(self, client, run_id: str, interval: float, resume: bool = False, fence=None):
        self.client, self.run_id, self.interval, self.fence = client, run_id, interval, fence
        self.failures = 0
        self.step = self._next_step() if resume else 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-system-metrics", daemon=True)
        self._nvml = _nvml_handles()
        self._net0 = None

    def _next_step(self) -> int:
        try:
            history = self.client.get_metric_history(self.run_id, "system/cpu_utilization_percentage")
            return max((m.step for m in history), default=-1) + 1
        except Exception:
            return 0

    def start(self) -> SystemMetrics:
        import psutil

        psutil.cpu_percent(interval=None)  # the first reading only sets the reference point
        self._net0 = psutil.net_io_counters()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if self.fence is not None and self.fence():
                return  # another process holds the run now: nothing more of ours goes into it
            try:
                self.log(self.sample())
            except Exception:
                self.failures += 1

    def sample(self) -> dict[str, float]:
        import psutil

        memory, disk, net = psutil.virtual_memory(), psutil.disk_usage("/"), psutil.net_io_counters()
        values = {
            "cpu_utilization_percentage": psutil.cpu_percent(interval=None),
            "system_memory_usage_megabytes": memory.used / MB,
            "system_memory_usage_percentage": memory.percent,
            "disk_usage_percentage": disk.percent,
            "disk_usage_megabytes": disk.used / MB,
            "disk_available_megabytes": disk.free / MB,
            "network_receive_megabytes": (net.bytes_recv - self._net0.bytes_recv) / MB,
            "network_transmit_megabytes": (net.bytes_sent - self._net0.bytes_sent) / MB,
        }
        for i, handle in enumerate(self._nvml):
            import pynvml

            use, mem = pynvml.nvmlDeviceGetUtilizationRates(handle), pynvml.nvmlDeviceGetMemoryInfo(handle)
            values[f"gpu_{i}_utilization_percentage"] = float(use.gpu)
            values[f"gpu_{i}_memory_usage_megabytes"] = mem.used / MB
            values[f"gpu_{i}_memory_usage_percentage"] = 100.0 * mem.used / mem.total
        return {f"system/{k}": float(v) for k, v in values.items()}

    def log(self, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, self.step) for k, v in values.items()])
        self.step += 1


def _nvml_handles() -> list:
    """NVML handles of the visible GPUs; none without the `gpu` extra (nvidia-ml-py) or a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:
        return []
