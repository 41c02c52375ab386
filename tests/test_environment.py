"""The fingerprint: machine_id, and the GPU fields, which describe the device measured."""

from fakes import FakeCuda, FakeNvml, uuid_of

from bench_lib.measure import telemetry
from bench_lib.measure.environment import (
    MACHINE_ID_FIELDS,
    STOCK_FLOAT32,
    collect_environment,
    gpu_fields,
    machine_id,
)

A100, H100 = ("NVIDIA A100-SXM4-40GB", 42949672960), ("NVIDIA H100 80GB HBM3", 85520809984)


def test_machine_id_is_stable_and_ignores_the_hostname():
    fields = {k: f"v-{k}" for k in MACHINE_ID_FIELDS}
    assert machine_id(fields) == machine_id(dict(fields, hostname="other-host"))
    assert machine_id(fields) != machine_id(dict(fields, torch_version="9.9"))
    assert len(machine_id(fields)) == 12


def test_float32_defaults_enter_the_machine_id_only_when_not_torchs_own():
    """TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 (some NVIDIA containers) runs float32 matmuls in TF32
    whatever a run asks: such an environment is another machine for comparisons."""
    fields = {k: f"v-{k}" for k in MACHINE_ID_FIELDS}
    assert machine_id(dict(fields, float32_defaults=STOCK_FLOAT32)) == machine_id(fields)
    override = "matmul highest, cuBLAS TF32 on, cuDNN TF32 on"
    assert machine_id(dict(fields, float32_defaults=override)) != machine_id(fields)


def test_environment_without_nvml_has_empty_gpu_fields(monkeypatch):
    monkeypatch.setattr(telemetry, "load_nvml", lambda: (None, "no NVML here"))
    env = collect_environment()
    assert env.gpu_name == "" and env.gpu_uuid == "" and env.gpu_memory_total_bytes is None
    assert env.cpu_count >= 1 and env.torch_version and env.machine_id
    assert env.float32_defaults == STOCK_FLOAT32
    assert env == collect_environment().__class__(**env.columns())  # columns round-trip


def test_the_gpu_fields_describe_the_visible_device_not_nvmls_gpu_0():
    """CUDA_VISIBLE_DEVICES=1 on a host with an A100 and an H100: torch's cuda:0 is the H100."""
    nvml = FakeNvml(gpus=(A100, H100))
    cuda = FakeCuda(uuids=[uuid_of(1).removeprefix("GPU-")])
    fields = gpu_fields(cuda, nvml)
    assert fields["gpu_name"] == H100[0] and fields["gpu_memory_total_bytes"] == H100[1]
    assert fields["gpu_count"] == 1 and fields["gpu_uuid"] == uuid_of(1)
    assert fields["gpu_driver"] == "550.54.15" and fields["gpu_mig_mode"] == "disabled"


def test_the_gpu_fields_of_a_mig_instance_are_the_instances():
    nvml = FakeNvml(gpus=(H100,), mig={0: (("NVIDIA H100 80GB HBM3 MIG 1g.10gb", 10 << 30),)})
    mig_uuid = nvml.instances[0][0].uuid
    fields = gpu_fields(FakeCuda(uuids=[mig_uuid.removeprefix("MIG-")]), nvml)
    assert fields["gpu_name"].endswith("MIG 1g.10gb") and fields["gpu_memory_total_bytes"] == 10 << 30
    assert fields["gpu_uuid"] == mig_uuid and fields["gpu_mig_mode"] == "enabled"


def test_a_device_nvml_does_not_know_leaves_the_nvml_fields_empty():
    fields = gpu_fields(FakeCuda(uuids=["deadbeef-0000-4000-8000-000000000000"]), FakeNvml(gpus=(A100, H100)))
    assert fields["gpu_name"] == "" and fields["gpu_uuid"] == "" and fields["gpu_count"] == 1


def test_environment_with_a_fake_gpu_is_another_machine(monkeypatch):
    env = collect_environment(nvml=FakeNvml(gpus=(H100,)), cuda=FakeCuda(uuids=[uuid_of(0)[4:]]))
    assert env.gpu_name == H100[0] and env.gpu_count == 1
    monkeypatch.setattr(telemetry, "load_nvml", lambda: (None, "no NVML here"))
    assert env.machine_id != collect_environment().machine_id  # the GPU is part of the identity


def test_nvml_errors_give_empty_fields_rather_than_a_crash():
    class Broken(FakeNvml):
        def nvmlDeviceGetHandleByUUID(self, uuid):
            raise self.NVMLError_NotSupported()

    fields = gpu_fields(FakeCuda(), Broken())
    assert fields["gpu_name"] == "" and fields["gpu_count"] == 1
