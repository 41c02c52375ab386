"""GPU-aware logic without a GPU: NVML telemetry and energy against a fake NVML module, CUDA
allocator figures against a fake CUDA module, the precision axis, and out-of-memory handling.
(`make gpu-check` runs the real thing on a GPU machine.)"""

import dataclasses
import json
import sys
import textwrap

import pytest
import torch
from fakes import FakeClock, FakeCuda, FakeNvml, uuid_of

from bench_lib.cli import main
from bench_lib.errors import UserError
from bench_lib.measure import telemetry
from bench_lib.measure.devices import CpuDevice, CudaDevice
from bench_lib.measure.precision import (
    autocast,
    float32_mode,
    float32_settings,
    parse_dtypes,
    unsupported_reason,
    within,
)
from bench_lib.measure.telemetry import (
    GpuMonitor,
    energy_columns,
    group_columns,
    measure_energy,
    throttle_names,
)
from bench_lib.models import ZOO
from bench_lib.records.cases import Profile
from bench_lib.records.schema import read_report
from bench_lib.suites.inference.measure import input_transfer, measure_inference_group

PID = 4242
PARENT, WORKER = 90000, 90001  # host PIDs, as NVML lists them from inside a container
H100, A100 = ("NVIDIA H100 80GB HBM3", 85520809984), ("NVIDIA A100-SXM4-40GB", 42949672960)


def monitor(nvml, index=0):
    return GpuMonitor(nvml, nvml.handles[index], pid=PID)


def cuda_device(nvml, uuid=None, **cuda_options):
    """A CudaDevice over a fake CUDA whose cuda:0 has `uuid` (torch's form: no prefix); creating
    its context makes NVML list the worker under a host PID."""
    uuid = uuid or uuid_of(0)
    cuda = FakeCuda(uuids=[uuid.removeprefix("GPU-").removeprefix("MIG-")], **cuda_options)
    device = CudaDevice(0, cuda=cuda, nvml=nvml)
    located = device.monitor
    cuda.on_context = lambda d: located and nvml.add_process(located.handle, WORKER, 300 << 20)
    return device, cuda


def test_throttle_reasons_are_named():
    assert throttle_names(0) == "none"
    assert throttle_names(0x1) == "gpu_idle"
    assert throttle_names(0x4 | 0x40) == "sw_power_cap|hw_thermal"
    assert throttle_names(0x8000) == "0x8000"


def test_a_snapshot_reads_every_field_and_counts_other_processes():
    nvml = FakeNvml()
    nvml.add_process(nvml.handles[0], PID)
    nvml.add_process(nvml.handles[0], 777)
    snap = monitor(nvml).snapshot()
    assert snap == telemetry.GpuSnapshot(
        throttle="gpu_idle", sm_clock_mhz=1980, mem_clock_mhz=2619, temperature_c=40, power_w=250.0,
        util_percent=97, process_memory_bytes=600 << 20, other_processes=1,
    )  # fmt: skip


def test_a_process_not_found_by_pid_is_this_one_only_if_this_one_has_a_context():
    nvml = FakeNvml()
    nvml.add_process(nvml.handles[0], 99)
    assert monitor(nvml).snapshot(has_context=True).other_processes == 0
    assert monitor(nvml).snapshot(has_context=False).other_processes == 1
    nvml.add_process(nvml.handles[0], 98)
    assert monitor(nvml).snapshot(has_context=True).other_processes == 1


def test_in_a_pid_namespace_the_process_that_appears_with_our_context_is_us():
    """The suite's parent held a context when the worker started (it left before the end): a
    disturbance the group must report. The worker has no context at telemetry_start; once it has,
    NVML lists it under a host PID, which gives its own memory and the context's footprint."""
    nvml = FakeNvml()
    nvml.add_process(nvml.handles[0], PARENT)
    device, _ = cuda_device(nvml)
    start = device.telemetry_start()
    nvml.remove_process(nvml.handles[0], PARENT)
    cols = device.telemetry_columns(start)
    assert cols["gpu_other_processes"] == 1
    assert cols["gpu_process_memory_bytes"] == 300 << 20
    assert cols["cuda_context_bytes"] == (300 << 20) - (200 << 20)
    assert "gpu_telemetry_note" not in cols


def test_a_worker_alone_on_the_gpu_is_not_disturbed():
    nvml = FakeNvml()
    device, _ = cuda_device(nvml)
    cols = device.telemetry_columns(device.telemetry_start())
    assert cols["gpu_other_processes"] == 0 and cols["gpu_process_memory_bytes"] == 300 << 20


def test_the_monitor_finds_the_cuda_device_by_uuid_not_by_index():
    """CUDA_VISIBLE_DEVICES=1: torch's cuda:0 is NVML's GPU 1."""
    nvml = FakeNvml(gpus=(A100, H100))
    device, _ = cuda_device(nvml, uuid=uuid_of(1))
    assert device.monitor.handle is nvml.handles[1] and device.telemetry_note == ""


def test_a_mig_instance_is_found_by_its_mig_uuid_and_has_no_energy():
    nvml = FakeNvml(gpus=(H100,), mig={0: (("NVIDIA H100 80GB HBM3 MIG 1g.10gb", 10 << 30),) * 2})
    instance = nvml.instances[0][1]
    device, cuda = cuda_device(nvml, uuid=instance.uuid)
    mon = device.monitor
    assert mon.handle is instance and mon.gpu_handle is nvml.handles[0] and mon.mig
    nvml.add_process(nvml.instances[0][0], PARENT)  # in the other instance: not ours to count
    cols = device.telemetry_columns(device.telemetry_start())
    assert cols["gpu_sm_clock_mhz_start"] == 1980 and cols["gpu_throttle_end"] == "gpu_idle"  # the GPU's
    assert cols["gpu_util_percent"] is None and cols["gpu_other_processes"] == 0
    assert "MIG instance" in cols["gpu_telemetry_note"]
    assert device.energy(cuda.kernel(0.01), 0.1) is None  # the GPU's counter counts every instance


def test_an_unknown_uuid_gives_no_telemetry_and_says_why_never_another_gpus():
    nvml = FakeNvml(gpus=(A100, H100))
    device, _ = cuda_device(nvml, uuid="deadbeef-0000-4000-8000-000000000000")
    assert device.monitor is None
    note = device.telemetry_columns(device.telemetry_start())["gpu_telemetry_note"]
    assert note == (
        "no NVML telemetry: NVML knows no device with UUID GPU-deadbeef-0000-4000-8000-000000000000 "
        "or MIG-deadbeef-0000-4000-8000-000000000000"
    )


def test_without_nvml_the_row_says_why(monkeypatch):
    monkeypatch.setattr(telemetry, "load_nvml", lambda: (None, "NVML not available: no driver"))
    monkeypatch.setattr("bench_lib.measure.devices.load_nvml", telemetry.load_nvml)
    device = CudaDevice(0, cuda=FakeCuda())
    assert device.telemetry_columns(device.telemetry_start()) == {
        "gpu_telemetry_note": "no NVML telemetry: NVML not available: no driver"
    }


def test_readings_an_older_driver_lacks_fall_back_to_the_older_api():
    """pynvml defines nvmlDeviceGetCurrentClocksEventReasons and the v3 process list, but a driver
    older than them raises NVMLError_FunctionNotFound: the older functions answer instead."""
    nvml = FakeNvml(
        missing=frozenset({"nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetComputeRunningProcesses"})
    )
    nvml.reasons = 0x20
    nvml.add_process(nvml.handles[0], PID)
    snap = monitor(nvml).snapshot()
    assert snap.throttle == "sw_thermal" and snap.process_memory_bytes == 600 << 20


def test_unsupported_readings_are_empty_never_invented():
    nvml = FakeNvml(
        power="",
        missing=frozenset(
            {"nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetComputeRunningProcesses_v2"}
        ),
    )
    snap = monitor(nvml).snapshot()
    assert snap.power_w is None and snap.other_processes is None and snap.sm_clock_mhz == 1980


def test_bugs_are_not_taken_for_unsupported_readings():
    class Buggy(FakeNvml):
        def nvmlDeviceGetTemperature(self, h, sensor):
            raise TypeError("a bug, not NVML saying no")

    with pytest.raises(TypeError):
        monitor(Buggy()).snapshot()


def test_group_columns_report_start_and_end():
    nvml = FakeNvml()
    nvml.add_process(nvml.handles[0], PID)
    start = monitor(nvml).snapshot()
    nvml.reasons, nvml.sm_clock, nvml.temperature = 0x20, 1410, 83
    nvml.add_process(nvml.handles[0], 5)
    cols = group_columns(start, monitor(nvml).snapshot())
    assert cols["gpu_throttle_start"] == "gpu_idle" and cols["gpu_throttle_end"] == "sw_thermal"
    assert (cols["gpu_sm_clock_mhz_start"], cols["gpu_sm_clock_mhz_end"]) == (1980, 1410)
    assert (cols["gpu_temperature_c_start"], cols["gpu_temperature_c_end"]) == (40, 83)
    assert cols["gpu_other_processes"] == 1 and cols["gpu_util_percent"] == 97


def test_energy_from_the_counter_over_whole_batches_of_calls():
    """Each call takes 0.125 s and 30 J: batches of what the calls so far say is left (at most
    double them): 1, 2, then 5 calls make exactly 1 s, and the counter difference is 8 x 30 J."""
    nvml, clock, syncs = FakeNvml(), FakeClock(), []

    def call():
        clock.now += 0.125
        nvml.energy_mj += 30_000

    reading = measure_energy(monitor(nvml), call, lambda: syncs.append(1), 1.0, clock=clock)
    assert reading == telemetry.EnergyReading(joules=240.0, seconds=1.0, calls=8, method="counter")
    assert len(syncs) == 4  # once before, once per batch: never per call
    cols = energy_columns(reading, items_per_call=8)
    assert cols["energy_j_per_item"] == pytest.approx(240 / 8 / 8)
    assert cols["gpu_power_w"] == pytest.approx(240.0) and cols["energy_method"] == "counter"


def test_an_energy_phase_ends_within_a_call_of_its_length():
    for seconds in (0.3, 0.5, 1.0, 2.0):
        clock = FakeClock()
        calls, took = telemetry.run_for(clock.work(0.0037), lambda: None, seconds, clock)
        assert seconds <= took < seconds + 0.0037 + 1e-9 and calls == round(took / 0.0037)


def test_energy_falls_back_to_integrated_instant_power_and_says_so():
    nvml, clock = FakeNvml(energy=False, power="instant"), FakeClock()

    class Sampler:
        joules = 12.5

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    reading = measure_energy(
        monitor(nvml), clock.work(0.5), lambda: None, 1.0, clock=clock, sampler=Sampler()
    )
    assert reading.method == "power_samples" and reading.joules == 12.5 and reading.calls == 2


def test_averaged_power_is_read_only_once_its_window_lies_inside_the_phase():
    """Only the 1-s average of nvmlDeviceGetPowerUsage (Ampere and newer, no counter): the GPU
    idles at 100 W, each call draws 300 W for 0.125 s. Integrating the lagging average over a short
    phase would mix in the idle second before it; the phase runs a second longer and takes the
    average at its end: exactly 37.5 J per call."""
    clock, busy = FakeClock(), []

    def trace(t):
        return 300.0 if any(a <= t < b for a, b in busy) else 100.0

    nvml = FakeNvml(energy=False, power="average", clock=clock, power_trace=trace)
    clock.now = 10.0  # idle until now

    def call():
        busy.append((clock.now, clock.now + 0.125))
        clock.now += 0.125

    reading = measure_energy(monitor(nvml), call, lambda: None, 0.5, clock=clock)
    assert reading.method == "power_average" and reading.calls == 12 and reading.seconds == 1.5
    assert reading.joules / reading.calls == pytest.approx(300 * 0.125, rel=1e-3)


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
    nvml = FakeNvml(energy=False, power="")
    assert measure_energy(monitor(nvml), lambda: None, lambda: None, 1.0) is None
    assert energy_columns(None, 1) == {}


def test_the_cpu_has_no_gpu_columns_and_no_energy():
    cpu = CpuDevice()
    assert cpu.telemetry_columns(cpu.telemetry_start()) == {} and cpu.energy(lambda: None, 1.0) is None
    assert input_transfer(cpu, (torch.ones(4, 8), torch.ones(3, dtype=torch.int64))) == {
        "input_bytes": 128 + 24
    }


def test_dtypes_parse_with_aliases_and_reject_unknown_ones():
    assert parse_dtypes("") == ["float32"]
    assert parse_dtypes("fp32, bf16,fp16,bfloat16,tf32") == ["float32", "bfloat16", "float16", "tf32"]
    assert parse_dtypes("tfloat32") == ["tf32"]
    with pytest.raises(UserError, match="unknown dtype 'int8'"):
        parse_dtypes("int8")


def test_unsupported_precisions_are_said_not_assumed():
    assert unsupported_reason("cpu", "float32") is None
    assert "CUDA only" in unsupported_reason("cpu", "float16")
    assert "CUDA only" in unsupported_reason("cpu", "tf32")
    volta = FakeCuda(capability=(7, 0))
    assert unsupported_reason("cuda", "bfloat16", cuda=volta) == "this GPU does not support bfloat16"
    assert unsupported_reason("cuda", "float16", cuda=volta) is None
    assert unsupported_reason("cuda", "tf32", cuda=volta) == (
        "this GPU has no TF32 (compute capability 7.0; TF32 needs 8.0 or newer)"
    )
    assert unsupported_reason("cuda", "tf32", cuda=FakeCuda(capability=(9, 0))) is None


def test_float32_cases_run_without_tf32_and_tf32_cases_with_it():
    """torch's default runs float32 convolutions in TF32 (cudnn.allow_tf32): a float32 case turns
    it off, a tf32 case turns TF32 on for matmuls and convolutions; both are restored after."""
    before = float32_settings()
    assert before == {"float32_matmul_precision": "highest", "cuda_matmul_tf32": False, "cudnn_tf32": True}
    with float32_mode("float32"):
        assert float32_settings() == {"float32_matmul_precision": "highest", "cuda_matmul_tf32": False,
                                      "cudnn_tf32": False}  # fmt: skip
    with float32_mode("tf32"):
        assert float32_settings() == {"float32_matmul_precision": "high", "cuda_matmul_tf32": True,
                                      "cudnn_tf32": True}  # fmt: skip
    assert float32_settings() == before


def test_every_row_records_the_float32_settings_it_ran_under():
    from bench_lib.measure.worker import run_request
    from bench_lib.records.cases import get_profile

    profile = {**get_profile("tiny").__dict__, "energy_seconds": 0.0}
    case = {"suite": "inference", "model": "mlp", "device": "cpu", "mode": "grad", "batch_size": 1, "dtype": "float32",
            "strategy": "", "optimizer": "", "compile": ""}  # fmt: skip
    request = {"cases": [case], "model": "mlp", "profile": profile, "threads": 1}
    result = run_request(request)["grad"]
    assert result.ok and result.row()["float32_matmul_precision"] == "highest"
    assert result.row()["cudnn_tf32"] is False and result.row()["cuda_matmul_tf32"] is False


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
def test_gpu_check_pipeline_runs_on_the_cpu_and_its_checks_pass(tmp_path):
    """`make gpu-check` itself needs a GPU; `--device cpu` runs the same pipeline here, with its
    CPU defaults (tiny profile, mlp, a 256 x 256 matmul), from another folder with a relative
    --out. Every check must pass, the matmul agreement included."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "bench_lib.gpucheck", "--out", "proof", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = tmp_path / "proof"
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    checks = json.loads((out / "checks.json").read_text())
    assert checks["matmul"]["passed"] and abs(checks["matmul"]["ratio"] - 1) <= 0.05
    assert checks["benchmark"]["passed"] and checks["memory_identical"]["passed"]
    assert checks["memory_identical"]["cases"] == 6 and checks["cuda_tests"]["passed"]
    assert set(checks["steps"]) == {"facts", "matmul", "bench-1", "bench-2", "cuda-tests"}
    assert all(step["exit_code"] == 0 and step["seconds"] > 0 for step in checks["steps"].values())
    assert (
        (out / "cpu.csv").is_file()
        and (out / "cpu.html").is_file()
        and (out / "steps" / "bench-1.log").is_file()
        and (out / "cpu.modules.csv").is_file()
    )
    assert "Where the memory goes" in (out / "cpu.html").read_text()  # from the by-module rows
    assert "Where the memory goes" in (out / "cpu.md").read_text()
    assert "Where the memory goes" in (out / "cpu.txt").read_text()
    from bench_lib.suites.finetune.lora import available

    # ruler, inference, finetune (the mlp at two batch sizes: 2 optimizers x 4 strategies, AdamW's
    # checkpoint and, with peft, lora)
    assert len(read_report(out / "cpu.csv")) == 3 + 6 + 2 * (8 + 1 + available())
    assert proc.stdout.rstrip().endswith(f"gpu-check: all checks passed (details in {out / 'checks.json'})")
    assert "matmul            ok" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_gpu_check_without_a_gpu_is_one_line_and_exit_2(tmp_path, capsys):
    from bench_lib.gpucheck import main as gpucheck

    assert gpucheck(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gpu-check needs a GPU" in err
    assert not (tmp_path / "checks.json").exists()


def test_the_gpu_check_parent_measures_nothing_itself(tmp_path, monkeypatch):
    """The matmul check (and everything else that runs on the device) happens in child
    processes: a CUDA context in the parent would show in NVML as another process on the GPU
    during every benchmark case. Here the parent may not create a tensor at all."""
    from bench_lib import gpucheck

    commands = []

    def step(self, name, cmd):
        commands.append((name, cmd))
        self.results.setdefault("steps", {})[name] = {"exit_code": 0, "seconds": 0.1, "last_line": ""}
        return self.results["steps"][name]

    def no_tensors(*args, **kwargs):
        raise AssertionError("the gpu-check parent created a tensor")

    monkeypatch.setattr(gpucheck.Check, "step", step)
    for name in ("randn", "empty", "ones", "zeros"):
        monkeypatch.setattr(torch, name, no_tensors)
    assert gpucheck.main(["--out", str(tmp_path), "--device", "cpu"]) == 1  # no benchmark report
    assert [name for name, _ in commands] == ["facts", "matmul", "bench-1", "bench-2", "cuda-tests"]
    matmul = dict(commands)["matmul"]
    assert matmul[1:5] == ["-m", "bench_lib.gpucheck", "matmul", "--device"]
    checks = json.loads((tmp_path / "checks.json").read_text())
    assert checks["benchmark"] == {"passed": False, "why": "bench-1 wrote no report (see steps/bench-1.log)"}


def test_a_step_past_its_time_is_killed_with_its_children_and_the_run_goes_on(tmp_path):
    import time

    from bench_lib.gpucheck import Check, Log

    log = Log(tmp_path / "log", time.monotonic())
    check = Check(tmp_path, log, deadline=time.monotonic() + 60, caps={"sleepy": 1.0})
    grandchild = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    began = time.monotonic()
    done = check.step("sleepy", [sys.executable, "-c", grandchild])
    assert done["timed_out"] and done["exit_code"] is None and time.monotonic() - began < 10
    assert json.loads((tmp_path / "checks.json").read_text())["steps"]["sleepy"]["timed_out"]
    late = Check(tmp_path, log, deadline=time.monotonic() - 1, caps={})
    assert late.step("more", [sys.executable, "-c", "pass"]) == {"skipped": "the time limit was reached"}


def test_preflight_says_each_missing_piece_in_one_line(monkeypatch):
    from bench_lib import preflight

    too_old = preflight.package_finding("pandas", "2.2", "4", "2.0.3")
    assert too_old.line() == "preflight: MISSING pandas: 2.0.3 installed, needs >= 2.2 and < 4"
    missing = preflight.package_finding("pytest-benchmark", "5.1", "6", None)
    assert missing.line() == "preflight: MISSING pytest-benchmark: not installed, needs >= 5.1 and < 6"
    optional = preflight.package_finding("matplotlib", "3.8", None, None)
    assert not optional.required and optional.line().startswith(
        "preflight: warning matplotlib: not installed"
    )
    assert preflight.package_finding("torch", "2.4", None, "2.11.0+cu130").ok
    # the history's database libraries: the GPU machine has none, gpu-check does not need them
    for name in ("sqlalchemy", "psycopg", "scipy"):
        assert not preflight.package_finding(name, "1.0", None, None).required
    # older than tested: only torch, numpy and pandas stop the run; the others are a warning
    older = preflight.package_finding("pytest-benchmark", "5.1", "6", "4.0.0")
    assert not older.required and older.line() == (
        "preflight: warning pytest-benchmark: 4.0.0 installed, older than tested (>= 5.1 and < 6): going on"
    )
    assert (
        preflight.package_finding("torch", "2.4", None, "2.3.1").line().startswith("preflight: MISSING torch")
    )
    newer = preflight.package_finding("pytest", "8.0", "10", "10.1")
    assert not newer.required and newer.line() == (
        "preflight: warning pytest: 10.1 installed, newer than tested (>= 8.0 and < 10): going on"
    )
    old = preflight.preflight("cuda", version=(3, 10, 12))
    assert [f.line().split(" (")[0] for f in old] == ["preflight: MISSING python: 3.10.12"]
    names = [f.name for f in preflight.preflight("cpu")]
    assert names[:2] == ["python", "torch"] and "pytest-benchmark" in names and "pandas" in names


def test_preflight_names_what_torch_compile_lacks(monkeypatch):
    from bench_lib import preflight

    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(preflight.shutil, "which", lambda name: None)
    assert preflight.compile_problem("cpu") == (
        "torch.compile on the CPU needs a C++ compiler (no c++, g++ or clang++ on PATH; or set CXX)"
    )
    monkeypatch.setattr(preflight.importlib.util, "find_spec", lambda name: object())
    assert "needs a C compiler for Triton" in preflight.compile_problem("cuda")
    monkeypatch.setattr(preflight.importlib.util, "find_spec", lambda name: None)
    assert preflight.compile_problem("cuda") == "torch.compile on CUDA needs Triton, which is not installed"


def test_compiled_cases_without_a_toolchain_are_skipped_with_the_reason(monkeypatch):
    from bench_lib import session
    from bench_lib.records.cases import Case

    monkeypatch.setattr(session, "compile_problem", lambda kind: "no compiler here")
    assert (
        session.unavailable(Case("inference", "mlp", "cpu", "grad", 1, compile="inductor"))
        == "no compiler here"
    )
    assert session.unavailable(Case("inference", "mlp", "cpu", "grad", 1)) is None


def test_gpu_check_verdicts_on_report_frames():
    from bench_lib.gpucheck import energy_coverage, float32_modes, undisturbed
    from bench_lib.records.schema import to_frame

    def row(dtype, others, matmul_tf32, cudnn_tf32, energy=0.5):
        return {"suite": "inference", "model": "cnn", "device": "cuda", "mode": "grad", "batch_size": 32,
                "dtype": dtype, "status": "ok", "gpu_other_processes": others, "cuda_matmul_tf32": matmul_tf32,
                "cudnn_tf32": cudnn_tf32, "energy_j_per_item": energy, "energy_method": "counter"}  # fmt: skip

    good = to_frame([row("float32", 0, False, False), row("tf32", 0, True, True)])
    assert float32_modes(good)["passed"] and undisturbed(good)["passed"] and energy_coverage(good)["passed"]
    unknown = to_frame([row("float32", None, False, False), row("tf32", 0, True, True)])
    # a Python bool: the final tally and checks.json read it (numpy's False is not `False`)
    assert undisturbed(unknown)["passed"] is False
    bad = to_frame([row("float32", 1, False, True, None), row("tf32", None, True, True)])
    assert float32_modes(bad)["wrong"] == ["inference-cnn-float32: cuBLAS TF32 False, cuDNN TF32 True"]
    assert (
        undisturbed(bad)["with_other_processes"] == ["inference-cnn-float32: 1"]
        and not undisturbed(bad)["passed"]
    )
    assert energy_coverage(bad)["with_energy"] == 1 and not energy_coverage(bad)["passed"]


def test_float16_training_steps_go_through_a_grad_scaler():
    """fp16 is measured on CUDA only, but the step's logic runs on the CPU too (autocast fp16
    and GradScaler("cpu")): the scaler scales the loss and the parameters still move."""
    from bench_lib.suites.finetune.measure import Strategy, TrainStep, template

    step = TrainStep(template(ZOO["mlp"], 4), Strategy("full", 0), "sgd", CpuDevice(), "float16")
    assert step.scaler is not None and step.scaler.get_scale() == 65536.0
    before = [p.detach().clone() for p in step.trainable]
    for _ in range(3):
        step()
    assert any(not torch.equal(p, b) for p, b in zip(step.trainable, before, strict=True))
    mem = step.measure_memory(CpuDevice())
    assert mem["mem_grads_bytes"] == sum(p.numel() * 4 for p in step.trainable)  # fp32 master grads


def test_the_real_pynvml_on_a_driver_without_the_v3_process_list_falls_back_to_v2(monkeypatch):
    """The real pynvml, its library faked at the lowest level: a driver without
    nvmlDeviceGetComputeRunningProcesses_v3 makes pynvml's unversioned function raise
    NVMLLibraryMismatchError (no NVMLError); the _v2 function answers instead."""
    pynvml = pytest.importorskip("pynvml")
    calls = []

    def pointer(name):
        calls.append(name)
        if name.endswith("_v3"):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        return lambda handle, count, infos: pynvml.NVML_SUCCESS  # v2: no process running

    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer", pointer)
    with pytest.raises(pynvml.NVMLLibraryMismatchError):
        pynvml.nvmlDeviceGetComputeRunningProcesses(object())
    assert telemetry.call(pynvml, telemetry.COMPUTE_PROCESSES, object()) == []
    assert calls[-2:] == [
        "nvmlDeviceGetComputeRunningProcesses_v3",
        "nvmlDeviceGetComputeRunningProcesses_v2",
    ]


@pytest.mark.skipif(unsupported_reason("cpu", "bfloat16") is not None, reason="no CPU bf16 autocast here")
def test_each_timed_forward_runs_in_an_autocast_region_of_its_own(monkeypatch):
    """One region over a round would let grad and no_grad reuse autocast's cast weights across
    the round's calls while inference_mode (whose cache torch turns off) casts them every call."""
    import bench_lib.suites.inference.measure as inference

    regions: list[int] = []  # one entry per region entered
    seen: list[tuple[int, bool]] = []  # per forward: the region it ran in, autocast on

    class Region:
        def __enter__(self) -> None:
            regions.append(len(regions))
            self.inner = torch.autocast("cpu", dtype=torch.bfloat16)
            self.inner.__enter__()

        def __exit__(self, *exc: object) -> None:
            self.inner.__exit__(*exc)

    monkeypatch.setattr(inference, "autocast", lambda kind, dtype: Region)

    def build() -> torch.nn.Module:
        model = ZOO["mlp"].build()
        model.register_forward_pre_hook(
            lambda *_: seen.append((len(regions), torch.is_autocast_enabled("cpu")))
        )
        return model

    spec = dataclasses.replace(ZOO["mlp"], build=build)
    profile = Profile("t", (2,), rounds=3, warmup_rounds=1, iterations=4, energy_seconds=0.0)
    results = measure_inference_group(
        spec, CpuDevice(), 2, profile, ["grad", "inference_mode"], dtype="bfloat16"
    )
    assert all(r.ok for r in results.values()), {k: r.error for k, r in results.items()}
    assert len(seen) >= 2 * (3 + 1) * 4 and all(on for _, on in seen)
    ids = [region for region, _ in seen]
    assert len(ids) == len(set(ids)), "forwards shared an autocast region"


class SlowEnergyPhaseCpu(CpuDevice):
    """A CPU device with an energy phase of 200 J over 100 s and 10 calls (10 s a call, far
    slower than the timed rounds): the energy per item must follow the rounds' pace, not the
    phase's."""

    def energy(self, fn, min_seconds):  # type: ignore[no-untyped-def]
        fn()
        return telemetry.EnergyReading(joules=200.0, seconds=100.0, calls=10, method="counter")


@pytest.mark.parametrize("suite", ["inference", "finetune"])
def test_energy_per_item_is_the_phases_power_at_the_timed_median_call(suite):
    from bench_lib.suites.finetune.measure import measure_finetune_group

    profile = Profile("t", (2,), rounds=3, warmup_rounds=1, iterations=2, energy_seconds=1.0)
    if suite == "inference":
        results = measure_inference_group(ZOO["mlp"], SlowEnergyPhaseCpu(), 2, profile, ["grad", "no_grad"])
    else:
        results = measure_finetune_group(
            ZOO["mlp"], SlowEnergyPhaseCpu(), 2, profile, ["sgd/full", "sgd/frozen_nograd"]
        )
    assert results and all(r.ok for r in results.values()), {k: r.error for k, r in results.items()}
    for result in results.values():
        row = result.row()
        assert row["gpu_power_w"] == pytest.approx(2.0)
        median_s = row["latency_ms_median"] / 1e3
        assert row["energy_j_per_item"] == pytest.approx(2.0 * median_s / 2, rel=1e-9)
        assert row["energy_j_per_item"] < 200.0 / 10 / 2 / 10  # the phase's own pace: 20 J a call


def test_a_broken_by_module_file_costs_the_gpu_check_its_section_not_its_reports(tmp_path, monkeypatch):
    """The benchmark steps (faked: they write a fixture report with a by-module file that is not
    one) are followed by the reports: all three are written, without "Where the memory goes"."""
    from pathlib import Path

    from bench_lib import gpucheck
    from bench_lib.records.schema import modules_path

    small = (Path(__file__).parent / "data" / "small.csv").read_text()

    def step(self, name, cmd):
        if name.startswith("bench-"):
            folder = Path(next(a for a in cmd if a.startswith("--bench-results-dir=")).split("=", 1)[1])
            folder.mkdir(parents=True)
            (folder / "latest.csv").write_text(small)
            modules_path(folder / "latest.csv").write_text("not,a,modules,file\n1,2,3,4\n")
        self.results.setdefault("steps", {})[name] = {"exit_code": 0, "seconds": 0.1, "last_line": ""}
        return self.results["steps"][name]

    monkeypatch.setattr(gpucheck.Check, "step", step)
    gpucheck.main(["--out", str(tmp_path), "--device", "cpu"])
    assert "cpu.modules.csv" in (tmp_path / "gpucheck.log").read_text()  # the error, named
    for ext in ("html", "md", "txt"):
        text = (tmp_path / f"cpu.{ext}").read_text()
        assert "Findings" in text and "Where the memory goes" not in text, ext


@pytest.mark.skipif(unsupported_reason("cpu", "bfloat16") is not None, reason="no CPU bf16 autocast here")
def test_every_timed_grad_and_no_grad_forward_casts_its_weights_afresh():
    """The property behind one autocast region per call: autocast's cache of cast weights does
    not carry from one timed call to the next (it did within a round, for grad and no_grad only:
    torch keeps no cache under inference_mode). The MLP casts 9 tensors to bf16 per forward (its
    input, 4 weights, 4 biases); counted at the dispatcher, where inference_mode's casts are not
    seen, so the inference_mode forwards are left out."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    class Casts(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            kwargs = kwargs or {}
            if func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.bfloat16:
                Casts.n += 1
            return func(*args, **kwargs)

    marks: list[tuple[int, bool]] = []

    def build() -> torch.nn.Module:
        model = ZOO["mlp"].build()
        model.register_forward_pre_hook(lambda *_: marks.append((Casts.n, torch.is_inference_mode_enabled())))
        return model

    spec = dataclasses.replace(ZOO["mlp"], build=build)
    profile = Profile("t", (2,), rounds=3, warmup_rounds=1, iterations=4, energy_seconds=0.0)
    with Casts():
        results = measure_inference_group(
            spec, CpuDevice(), 2, profile, ["grad", "no_grad"], dtype="bfloat16"
        )
    assert all(r.ok for r in results.values()), {k: r.error for k, r in results.items()}
    marks.append((Casts.n, False))
    casts = Counter(marks[i + 1][0] - marks[i][0] for i in range(len(marks) - 1) if not marks[i][1])
    assert set(casts) == {9} and casts[9] >= 2 * (3 + 1) * 4, casts  # the timed rounds, then probes
