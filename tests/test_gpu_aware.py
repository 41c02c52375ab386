"""GPU-aware logic without a GPU: NVML telemetry and energy against a fake NVML module, CUDA
allocator figures against a fake CUDA module, the precision axis, and out-of-memory handling.
(`make gpu-check` runs the real thing on a GPU machine.)"""

import textwrap
from types import SimpleNamespace

import pytest
import torch

from bench_lib import telemetry
from bench_lib.cases import Profile
from bench_lib.cli import main
from bench_lib.devices import CpuDevice, CudaDevice
from bench_lib.errors import UserError
from bench_lib.inference import input_transfer, measure_inference_group
from bench_lib.models import ZOO
from bench_lib.precision import autocast, parse_dtypes, unsupported_reason, within
from bench_lib.schema import read_report
from bench_lib.telemetry import GpuMonitor, energy_columns, group_columns, measure_energy, throttle_names

PID = 4242


class NotSupported(Exception):
    pass


class FakeNvml:
    """The pynvml functions the suite calls, with settable readings."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    def __init__(self, energy=True, power=True, pids=(PID,)):
        self.energy_mj, self.power_mw = 1_000_000, 250_000
        self.has_energy, self.has_power = energy, power
        self.pids = list(pids)
        self.reasons = 0x1
        self.sm_clock, self.temperature = 1980, 40

    def nvmlDeviceGetHandleByIndex(self, i):
        return f"gpu{i}"

    def nvmlDeviceGetHandleByUUID(self, uuid):
        raise NotSupported(uuid)

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return self.reasons

    def nvmlDeviceGetClockInfo(self, h, which):
        return self.sm_clock if which == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetTemperature(self, h, sensor):
        return self.temperature

    def nvmlDeviceGetPowerUsage(self, h):
        if not self.has_power:
            raise NotSupported("power")
        return self.power_mw

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=97, memory=40)

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=p, usedGpuMemory=600 << 20) for p in self.pids]

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if not self.has_energy:
            raise NotSupported("energy")
        return self.energy_mj


def monitor(nvml):
    return GpuMonitor(nvml, "gpu0", pid=PID)


def test_throttle_reasons_are_named():
    assert throttle_names(0) == "none"
    assert throttle_names(0x1) == "gpu_idle"
    assert throttle_names(0x4 | 0x40) == "sw_power_cap|hw_thermal"
    assert throttle_names(0x8000) == "0x8000"


def test_a_snapshot_reads_every_field_and_counts_other_processes():
    nvml = FakeNvml(pids=(PID, 777))
    snap = monitor(nvml).snapshot()
    assert snap == telemetry.GpuSnapshot(
        throttle="gpu_idle", sm_clock_mhz=1980, mem_clock_mhz=2619, temperature_c=40, power_w=250.0,
        util_percent=97, process_memory_bytes=600 << 20, other_processes=1,
    )  # fmt: skip


def test_without_our_pid_in_the_list_one_process_is_taken_to_be_us():
    """In a container NVML may list host PIDs: one process is then this one, not a disturbance."""
    snap = monitor(FakeNvml(pids=(99,))).snapshot()
    assert snap.other_processes == 0 and snap.process_memory_bytes is None
    assert monitor(FakeNvml(pids=(98, 99))).snapshot().other_processes == 1


def test_unsupported_readings_are_empty_never_invented():
    nvml = FakeNvml(power=False)
    snap = monitor(nvml).snapshot()
    assert snap.power_w is None and snap.sm_clock_mhz == 1980


def test_group_columns_report_start_and_end():
    nvml = FakeNvml()
    start = monitor(nvml).snapshot()
    nvml.reasons, nvml.sm_clock, nvml.temperature, nvml.pids = 0x20, 1410, 83, [PID, 5]
    cols = group_columns(start, monitor(nvml).snapshot())
    assert cols["gpu_throttle_start"] == "gpu_idle" and cols["gpu_throttle_end"] == "sw_thermal"
    assert (cols["gpu_sm_clock_mhz_start"], cols["gpu_sm_clock_mhz_end"]) == (1980, 1410)
    assert (cols["gpu_temperature_c_start"], cols["gpu_temperature_c_end"]) == (40, 83)
    assert cols["gpu_other_processes"] == 1 and cols["gpu_util_percent"] == 97


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_energy_from_the_counter_over_whole_batches_of_calls():
    """Each call takes 0.1 s and 30 J: the phase doubles its batches until >= 1 s has passed
    (1 + 2 + 4 + 8 = 15 calls), and the counter difference is exactly 15 x 30 J."""
    nvml, clock, syncs = FakeNvml(), Clock(), []

    def call():
        clock.t += 0.1
        nvml.energy_mj += 30_000

    reading = measure_energy(monitor(nvml), call, lambda: syncs.append(1), 1.0, clock=clock)
    assert reading == telemetry.EnergyReading(
        joules=450.0, seconds=pytest.approx(1.5), calls=15, method="counter"
    )
    assert len(syncs) == 5  # once before, once per batch: never per call
    cols = energy_columns(reading, items_per_call=8)
    assert cols["energy_j_per_item"] == pytest.approx(450 / 15 / 8)
    assert cols["gpu_power_w"] == pytest.approx(300.0) and cols["energy_method"] == "counter"


def test_energy_falls_back_to_integrated_power_and_says_so():
    nvml, clock = FakeNvml(energy=False), Clock()

    class Sampler:
        joules = 12.5

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    def call():
        clock.t += 0.5

    reading = measure_energy(monitor(nvml), call, lambda: None, 1.0, clock=clock, sampler=Sampler())
    assert reading.method == "power_samples" and reading.joules == 12.5 and reading.calls == 3


def test_power_sampler_integrates_by_the_trapezoid_rule():
    readings = iter([(0.0, 100.0), (1.0, 200.0), (3.0, 200.0)])
    now = {"t": 0.0}

    def read():
        t, watts = next(readings, (None, None))
        if t is None:
            return None
        now["t"] = t
        return watts

    sampler = telemetry.PowerSampler(read, interval_s=0.0, clock=lambda: now["t"])
    with sampler:
        while sampler._thread.is_alive() and len(sampler._points) < 3:
            pass
    assert sampler.joules == pytest.approx(150.0 + 400.0)  # (100+200)/2 x 1 s + 200 x 2 s


def test_no_energy_without_counter_or_power():
    assert (
        measure_energy(monitor(FakeNvml(energy=False, power=False)), lambda: None, lambda: None, 1.0) is None
    )
    assert energy_columns(None, 1) == {}


class FakeCuda:
    def synchronize(self, index=None):
        pass

    def memory_reserved(self, index=None):
        return 200 << 20


def test_cuda_context_footprint_is_process_memory_minus_reserved():
    nvml = FakeNvml()
    device = CudaDevice(0, cuda=FakeCuda(), monitor=monitor(nvml))
    start = device.telemetry_start()
    cols = device.telemetry_columns(start)
    assert cols["cuda_context_bytes"] == (600 << 20) - (200 << 20)
    assert cols["gpu_throttle_end"] == "gpu_idle"


def test_the_cpu_has_no_gpu_columns_and_no_energy():
    cpu = CpuDevice()
    assert cpu.telemetry_columns(cpu.telemetry_start()) == {} and cpu.energy(lambda: None, 1.0) is None
    assert input_transfer(cpu, (torch.ones(4, 8), torch.ones(3, dtype=torch.int64))) == {
        "input_bytes": 128 + 24
    }


def test_monitor_is_none_without_nvml(monkeypatch):
    monkeypatch.setattr(telemetry, "load_nvml", lambda: None)
    assert GpuMonitor.open(0) is None


def test_dtypes_parse_with_aliases_and_reject_unknown_ones():
    assert parse_dtypes("") == ["float32"]
    assert parse_dtypes("fp32, bf16,fp16,bfloat16") == ["float32", "bfloat16", "float16"]
    with pytest.raises(UserError, match="unknown dtype 'int8'"):
        parse_dtypes("int8")


def test_unsupported_precisions_are_said_not_assumed():
    assert unsupported_reason("cpu", "float32") is None
    assert "CUDA only" in unsupported_reason("cpu", "float16")
    no_bf16 = SimpleNamespace(is_available=lambda: True, is_bf16_supported=lambda: False)
    assert unsupported_reason("cuda", "bfloat16", cuda=no_bf16) == "this GPU does not support bfloat16"
    assert unsupported_reason("cuda", "float16", cuda=no_bf16) is None


def test_autocast_contexts_combine_with_grad_modes():
    with within(torch.no_grad, autocast("cpu", "bfloat16"))():
        out = torch.nn.functional.linear(torch.ones(2, 4), torch.ones(3, 4))
        assert not torch.is_grad_enabled()
    assert out.dtype == torch.bfloat16 and torch.is_grad_enabled()


TINY = Profile("t", (2,), rounds=3, warmup_rounds=1, iterations=1, energy_seconds=0.0)


@pytest.mark.skipif(unsupported_reason("cpu", "bfloat16") is not None, reason="no CPU bf16 autocast here")
def test_bf16_inference_runs_under_autocast_and_keys_the_dtype():
    results = measure_inference_group(ZOO["mlp"], CpuDevice(), 2, TINY, ["grad", "no_grad"], dtype="bfloat16")
    assert all(r.ok for r in results.values()), {k: r.error for k, r in results.items()}
    assert {r.case.dtype for r in results.values()} == {"bfloat16"}
    assert results["grad"].case.id == "mlp-cpu-b2-bfloat16-grad"
    assert results["no_grad"].metrics["mem_saved_for_backward_bytes"] == 0


def oom_model(tmp_path, body):
    path = tmp_path / "big.py"
    path.write_text("import os, signal\nimport torch\nfrom torch import nn\n" + textwrap.dedent(body))
    return f"{path}:make_model"


def test_out_of_memory_is_recorded_and_larger_batches_are_not_retried(tmp_path, capsys):
    ref = oom_model(
        tmp_path,
        """
        def make_model(b):
            if b >= 4:
                raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {b} GiB")
            return nn.Linear(4, 4), torch.randn(b, 4)
        """,
    )
    out = tmp_path / "oom.csv"
    argv = ["run", "--model", ref, "--profile", "tiny", "--devices", "cpu", "--suites", "inference",
            "--batch-sizes", "1,4,8", "--processes", "0", "--out", str(out)]  # fmt: skip
    assert main(argv) == 1
    report = read_report(out).set_index(["batch_size", "mode"])
    assert (report.loc[1, "status"] == "ok").all()
    assert (report.loc[4, "status"] == "oom").all()
    assert report.loc[4, "error"].str.startswith("OutOfMemoryError: CUDA out of memory").all()
    assert (report.loc[8, "status"] == "oom").all()
    assert (report.loc[8, "error"] == "not run: batch size 4 already ran out of memory on cpu").all()
    assert "6 of 9 cases did not succeed" in capsys.readouterr().out


@pytest.mark.slow
def test_a_worker_killed_like_by_the_oom_killer_is_an_oom_case(tmp_path):
    ref = oom_model(
        tmp_path,
        """
        def make_model(b):
            if b >= 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return nn.Linear(4, 4), torch.randn(b, 4)
        """,
    )
    out = tmp_path / "killed.csv"
    argv = ["run", "--model", ref, "--profile", "tiny", "--devices", "cpu", "--suites", "inference",
            "--batch-sizes", "2", "--processes", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 1
    report = read_report(out)
    assert set(report["status"]) == {"oom"} and report["error"].str.contains("SIGKILL").all()


@pytest.mark.slow
def test_gpu_check_pipeline_runs_on_the_cpu(tmp_path):
    """`make gpu-check` itself needs a GPU; `--device cpu` runs the same pipeline here."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "bench_lib.gpucheck", "--out", str(tmp_path), "--device", "cpu", "--profile",
           "tiny", "--models", "mlp", "--dtypes", "float32", "--matmul-size", "256"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    checks = json.loads((tmp_path / "checks.json").read_text())
    assert checks["benchmark"]["passed"] and checks["memory_identical"]["passed"]
    assert checks["memory_identical"]["cases"] == 6 and checks["cuda_tests"]["passed"]
    assert checks["matmul"]["suite_ms"] > 0 and checks["matmul"]["timer_ms"] > 0
    assert (tmp_path / "cpu.csv").is_file() and (tmp_path / "cpu.html").is_file()
    assert len(read_report(tmp_path / "cpu.csv")) == 3 + 6 + 16  # ruler, inference, finetune


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_gpu_check_without_a_gpu_is_one_line_and_exit_2(tmp_path, capsys):
    from bench_lib.gpucheck import main as gpucheck

    assert gpucheck(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gpu-check needs a GPU" in err


def test_float16_training_steps_go_through_a_grad_scaler():
    """fp16 is measured on CUDA only, but the step's logic runs on the CPU too (autocast fp16
    and GradScaler("cpu")): the scaler scales the loss and the parameters still move."""
    from bench_lib.finetune import Strategy, TrainStep, template

    step = TrainStep(template(ZOO["mlp"], 4), Strategy("full", 0), "sgd", CpuDevice(), "float16")
    assert step.scaler is not None and step.scaler.get_scale() == 65536.0
    before = [p.detach().clone() for p in step.trainable]
    for _ in range(3):
        step()
    assert any(not torch.equal(p, b) for p, b in zip(step.trainable, before, strict=True))
    mem = step.measure_memory(CpuDevice())
    assert mem["mem_grads_bytes"] == sum(p.numel() * 4 for p in step.trainable)  # fp32 master grads
