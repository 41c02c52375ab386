from types import SimpleNamespace

from bench_lib import telemetry
from bench_lib.environment import MACHINE_ID_FIELDS, collect_environment, machine_id


class FakeNvml:
    def nvmlSystemGetDriverVersion(self):
        return b"550.54.15"

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, handle):
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(total=85520809984, used=0, free=85520809984)


def test_machine_id_is_stable_and_ignores_the_hostname():
    fields = {k: f"v-{k}" for k in MACHINE_ID_FIELDS}
    assert machine_id(fields) == machine_id(dict(fields, hostname="other-host"))
    assert machine_id(fields) != machine_id(dict(fields, torch_version="9.9"))
    assert len(machine_id(fields)) == 12


def test_environment_without_nvml_has_empty_gpu_fields(monkeypatch):
    monkeypatch.setattr(telemetry, "load_nvml", lambda: None)
    env = collect_environment()
    assert env.gpu_name == "" and env.gpu_count == 0 and env.gpu_memory_total_bytes is None
    assert env.cpu_count >= 1 and env.torch_version and env.machine_id
    assert env == collect_environment().__class__(**env.columns())  # columns round-trip


def test_environment_with_a_fake_nvml_reads_the_gpu(monkeypatch):
    env = collect_environment(nvml=FakeNvml())
    assert env.gpu_name == "NVIDIA H100 80GB HBM3" and env.gpu_count == 2
    assert env.gpu_driver == "550.54.15" and env.gpu_memory_total_bytes == 85520809984
    monkeypatch.setattr(telemetry, "load_nvml", lambda: None)
    assert env.machine_id != collect_environment().machine_id  # the GPU is part of the identity


def test_nvml_errors_give_no_gpu_rather_than_a_crash():
    class Broken(FakeNvml):
        def nvmlDeviceGetCount(self):
            raise RuntimeError("NVML_ERROR_UNKNOWN")

    assert telemetry.gpu_inventory(Broken()) == []
