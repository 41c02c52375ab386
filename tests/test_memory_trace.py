"""The allocator trace against byte counts computed by hand from shapes (fp32: 4 bytes per
element), and against the allocator read independently (the profiler's flat event list).

Each of these would have caught the tensor-storage tracker's blind spot: what a kernel
allocates and frees inside one op (fused attention, im2col) never reaches an op boundary.
"""

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.checkpoint import checkpoint

from bench_lib.measure.devices import CpuDevice
from bench_lib.measure.memory import SavedTensorCounter, StoragePeakTracker
from bench_lib.measure.memory_trace import AUTOGRAD, ROOT, MemoryTrace
from bench_lib.models import ModelSpec
from bench_lib.records.cases import Profile
from bench_lib.suites.inference.measure import measure_inference_group

F32 = 4
MODES = (torch.enable_grad, torch.no_grad, torch.inference_mode)


def allocator_high_water(fn):
    """The CPU allocator's high-water mark during `fn` above what was live before, read
    independently of `MemoryTrace`: the signed sizes of the profiler's flat list of memory
    events (no addresses, no event tree), summed in time order."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.device_type() == torch._C._autograd.DeviceType.CPU and e.nbytes() != 0
    ]
    total = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        total += e.nbytes()
        peak = max(peak, total)
    return peak


def traced(model, x, ctx):
    """Peak, bytes saved and module rows of one forward of `model` in `ctx`, after a warm-up."""
    with ctx():
        model(x)
    trace = MemoryTrace("cpu", model)
    saved = SavedTensorCounter(model.parameters(), label=trace.current_label)
    with ctx(), trace.track(), saved.track():
        y = model(x)
    del y
    return trace, saved, trace.modules(saved.by_label)


def storage_peak(model, x, ctx):
    tracker = StoragePeakTracker()
    with ctx(), tracker.track():
        model(x)
    return tracker.peak_bytes


def check_against_independent_read(model, x, ctx, trace):
    def forward():
        with ctx():
            model(x)

    assert trace.peak_bytes == allocator_high_water(forward)


@pytest.mark.parametrize("ctx", [torch.no_grad, torch.inference_mode])
def test_fused_transformer_layer_peak_is_its_qkv_projection_and_heads(ctx):
    """`nn.TransformerEncoderLayer` in eval without grad is one op
    (`_transformer_encoder_layer_fwd`). Its peak: the packed q/k/v projection (T x 3E) and q, k,
    v split into heads (3 x T x E), alive together: 6 T E elements. The op's output (T x E) is
    all a tensor tracker sees."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, 2, 256, dropout=0.0, batch_first=True).eval()
    x = torch.randn(32, 16, 64)
    t_e = 32 * 16 * 64 * F32  # 131,072 bytes
    trace, saved, rows = traced(layer, x, ctx)
    assert trace.peak_bytes == 6 * t_e == 786_432
    assert storage_peak(layer, x, ctx) == t_e  # the blind spot this replaces
    assert saved.saved_bytes == 0
    # the fast path ran (module hooks would have turned it off): no submodule was called
    assert [(r.module, r.mem_peak_bytes) for r in rows] == [(ROOT, 786_432)]
    check_against_independent_read(layer, x, ctx, trace)


def test_transformer_layer_under_grad_is_seen_by_both_views():
    """Under grad the layer runs op by op: the allocator and the op-boundary view agree, and
    the bytes saved for backward and the peak split exactly over its modules."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, 2, 256, dropout=0.0, batch_first=True).eval()
    x = torch.randn(32, 16, 64)
    trace, saved, rows = traced(layer, x, torch.enable_grad)
    assert trace.peak_bytes == storage_peak(layer, x, torch.enable_grad) == 1_974_272
    check_against_independent_read(layer, x, torch.enable_grad, trace)
    assert sum(r.mem_peak_bytes for r in rows) == trace.peak_bytes
    assert sum(r.mem_saved_for_backward_bytes for r in rows) == saved.saved_bytes > 0
    by_module = {r.module: r for r in rows}
    assert by_module["self_attn"].module_type == "MultiheadAttention"
    assert by_module["self_attn"].mem_saved_for_backward_bytes > 0


class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(64, 4, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


@pytest.mark.parametrize("ctx", MODES, ids=lambda c: c.__name__)
def test_multihead_attention_peak_matches_the_allocator(ctx):
    """`nn.MultiheadAttention` without grad is `_native_multi_head_attention`: peak 6 T E, as for
    the encoder layer (packed projection + heads); under grad, the allocator read independently."""
    torch.manual_seed(0)
    model = SelfAttention().eval()
    x = torch.randn(8, 16, 64)
    t_e = 8 * 16 * 64 * F32
    trace, _, rows = traced(model, x, ctx)
    check_against_independent_read(model, x, ctx, trace)
    assert sum(r.mem_peak_bytes for r in rows) == trace.peak_bytes
    if ctx is not torch.enable_grad:
        assert trace.peak_bytes == 6 * t_e == 196_608
        assert storage_peak(model, x, ctx) == t_e


@pytest.mark.parametrize("ctx", [torch.no_grad, torch.inference_mode])
def test_zoo_transformer_peaks_in_its_second_fused_layer(ctx):
    """The zoo transformer without grad: `nn.TransformerEncoder` keeps its input (the embedding
    output) while the layers run, so in layer 2 its input, layer 1's output and the fused layer's
    6 T E are alive together: 8 T E. Tensors alone would say 3 T E (three activations)."""
    from bench_lib.models import ZOO
    from bench_lib.models.transformer import D_MODEL, SEQ_LEN

    torch.manual_seed(0)
    instance = ZOO["transformer"].instantiate(2)
    model, (ids,) = instance.model.eval(), instance.input_tuple()
    t_e = 2 * SEQ_LEN * D_MODEL * F32
    trace, _, rows = traced(model, ids, ctx)
    assert trace.peak_bytes == 8 * t_e
    assert storage_peak(model, ids, ctx) == 3 * t_e
    held = {r.module: r.mem_peak_bytes for r in rows}
    assert held["encoder.layers.1"] == 6 * t_e  # the fused layer, its submodules never called
    assert "encoder.layers.1.self_attn" not in held
    check_against_independent_read(model, ids, ctx, trace)


@pytest.fixture
def without_mkldnn():
    enabled = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(enabled)


@pytest.mark.parametrize("ctx", MODES, ids=lambda c: c.__name__)
def test_convolution_counts_its_im2col_buffer(ctx, without_mkldnn):
    """Without oneDNN, a 3x3 convolution unfolds its input (im2col) into a buffer of
    N x (C_in k k) x (H W) elements that lives beside the output during the op, then is freed."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 16, 3, padding=1, bias=False).eval()
    x = torch.randn(4, 3, 32, 32)
    output = 4 * 16 * 32 * 32 * F32  # 262,144
    columns = 4 * (3 * 3 * 3) * (32 * 32) * F32  # 442,368
    trace, saved, _ = traced(conv, x, ctx)
    assert trace.peak_bytes == output + columns
    assert storage_peak(conv, x, ctx) == output
    assert saved.saved_bytes == (x.numel() * F32 if ctx is torch.enable_grad else 0)
    check_against_independent_read(conv, x, ctx, trace)


def test_onednn_convolution_scratch_is_seen_too():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 16, 3, padding=1, bias=False).eval()
    x = torch.randn(4, 3, 32, 32)
    trace, _, _ = traced(conv, x, torch.no_grad)
    assert trace.peak_bytes >= storage_peak(conv, x, torch.no_grad) == 4 * 16 * 32 * 32 * F32
    check_against_independent_read(conv, x, torch.no_grad, trace)


class ViewInPlaceChain(nn.Module):
    """Linear, then views and in-place ops on its output, then a reduction."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 8)

    def forward(self, x):
        h = self.lin(x)  # 5 x 8: the only activation
        h = h.view(5, 2, 4)
        h.add_(1)
        h.relu_()  # saves its result: h's storage
        return h.view(5, 8)[:, 2:].sum(dim=1)  # 5 elements


@pytest.mark.parametrize("ctx", MODES, ids=lambda c: c.__name__)
def test_views_and_in_place_ops_allocate_nothing(ctx):
    torch.manual_seed(0)
    model = ViewInPlaceChain().eval()
    x = torch.randn(5, 4)
    trace, saved, rows = traced(model, x, ctx)
    assert trace.peak_bytes == 5 * 8 * F32 + 5 * F32  # the Linear's output and the sum
    grad = ctx is torch.enable_grad
    # grad: the Linear saves its input x, ReLU its result (h, counted once)
    assert saved.saved_bytes == (5 * 4 * F32 + 5 * 8 * F32 if grad else 0)
    by_module = {r.module: r for r in rows}
    assert by_module["lin"].mem_peak_bytes == 5 * 8 * F32  # allocated in the Linear
    assert by_module[ROOT].mem_peak_bytes == 5 * F32  # the sum, in the model's own forward
    if grad:
        assert by_module["lin"].mem_saved_for_backward_bytes == 5 * 4 * F32
        assert by_module[ROOT].mem_saved_for_backward_bytes == 5 * 8 * F32  # relu_ runs in forward()


class Checkpointed(nn.Module):
    def __init__(self, reentrant=False):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        self.reentrant = reentrant

    def forward(self, x):
        return checkpoint(self.block, x, use_reentrant=self.reentrant)


TINY = Profile("t", (1,), rounds=2, warmup_rounds=1, iterations=1)


def checkpointed_spec(reentrant):
    return ModelSpec(
        "ckpt", build=lambda: Checkpointed(reentrant), make_inputs=lambda b: (torch.randn(b, 4),)
    )


def test_checkpointed_forward_saves_only_the_checkpoint_inputs():
    """`torch.utils.checkpoint` keeps its input and recomputes the rest in backward: the saved
    bytes are the input's, and grad mode still saves something (the mode check passes)."""
    results = measure_inference_group(checkpointed_spec(False), CpuDevice(), 5, TINY, ["grad", "no_grad"])
    assert [r.status for r in results.values()] == ["ok", "ok"], [r.error for r in results.values()]
    grad = results["grad"]
    assert grad.metrics["mem_saved_for_backward_bytes"] == 5 * 4 * F32  # the input only
    assert sum(m.mem_saved_for_backward_bytes for m in grad.modules) == 5 * 4 * F32
    plain = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    _, saved, _ = traced(plain, torch.randn(5, 4), torch.enable_grad)
    assert saved.saved_bytes == 5 * 4 * F32 + 5 * 8 * F32  # without checkpoint: + the ReLU output


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")
def test_reentrant_checkpoint_without_an_input_that_needs_grad_fails_the_grad_check():
    """The reentrant checkpoint records no graph when no input needs grad: the block's
    parameters would silently get no gradient. The grad-mode check says so."""
    results = measure_inference_group(checkpointed_spec(True), CpuDevice(), 5, TINY, ["grad"])
    assert results["grad"].status == "failed" and "no grad_fn" in results["grad"].error


def test_backward_recomputation_is_charged_to_the_recomputed_modules():
    torch.manual_seed(0)
    model = Checkpointed()
    x = torch.randn(5, 4)
    trace = MemoryTrace("cpu", model)
    with trace.track():
        model(x).sum().backward()
    rows = trace.modules()
    assert sum(r.mem_peak_bytes for r in rows) == trace.peak_bytes
    assert trace.allocated_bytes > 0
    # the recomputed forward ran inside backward, under its modules' ranges
    called = {r.module for r in rows}
    assert {"block.0", "block.1", "block.2"} <= called


def test_gradients_are_charged_to_the_layer_whose_backward_made_them():
    """Big weights, one input row: the peak comes at the end of backward, with every gradient
    alive; each Linear holds exactly its weight's and bias's gradients, allocated by its
    backward (the ReLU: the gradient it passes on, alive while the first Linear's backward runs)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    x = torch.randn(1, 64)
    trace = MemoryTrace("cpu", model)
    with trace.track():
        loss = model(x).sum()
        with trace.phase(AUTOGRAD):
            loss.backward()
    held = {r.module: r.mem_peak_bytes for r in trace.modules()}
    assert sum(held.values()) == trace.peak_bytes
    linear_grads = (64 * 64 + 64) * F32
    assert held["0"] == held["2"] == linear_grads
    assert held["1"] == 64 * F32


def test_figures_are_identical_between_two_traces():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0, batch_first=True).eval()
    x = torch.randn(4, 8, 32)
    first = [traced(layer, x, ctx) for ctx in MODES]
    second = [traced(layer, x, ctx) for ctx in MODES]
    assert [(t.peak_bytes, rows) for t, _, rows in first] == [(t.peak_bytes, rows) for t, _, rows in second]


def test_memory_from_before_the_block_is_not_counted_when_freed():
    before = torch.ones(1024)
    trace = MemoryTrace("cpu")
    with trace.track():
        del before  # frees 4 KiB that predates the block
        keep = torch.ones(256)
    assert trace.peak_bytes == trace.allocated_bytes == 1024
    del keep


def test_a_dispatch_mode_around_the_trace_leaves_its_figures_alone():
    torch.manual_seed(0)
    model = ViewInPlaceChain().eval()
    x = torch.randn(5, 4)
    plain, _, rows = traced(model, x, torch.enable_grad)
    trace = MemoryTrace("cpu", model)
    with StoragePeakTracker().track(), trace.track():
        model(x)
    assert trace.peak_bytes == plain.peak_bytes
    assert {r.module: r.mem_peak_bytes for r in trace.modules()} == {r.module: r.mem_peak_bytes for r in rows}


def test_the_trace_refuses_to_nest_in_a_running_profiler():
    with profile(activities=[ProfilerActivity.CPU]), pytest.raises(RuntimeError, match="already running"):
        with MemoryTrace("cpu").track():
            pass


@pytest.mark.parametrize("name", ["mlp", "cnn", "transformer", "polynomial"])
def test_every_zoo_models_suite_figures_equal_the_allocator_read_independently(name):
    """What the suite reports (`measure_inference_group`), in every mode, against the allocator
    read independently on a fresh copy of the same model and inputs; module rows sum exactly."""
    from bench_lib.models import ZOO

    results = measure_inference_group(ZOO[name], CpuDevice(), 4, TINY, ["grad", "no_grad", "inference_mode"])
    torch.manual_seed(0)
    instance = ZOO[name].instantiate(4)
    model, inputs = instance.model.eval(), instance.input_tuple()
    for mode, ctx in zip(("grad", "no_grad", "inference_mode"), MODES, strict=True):
        result = results[mode]
        with ctx():
            model(*inputs)

        def forward(ctx=ctx):
            with ctx():
                model(*inputs)

        assert result.metrics["mem_peak_bytes"] == allocator_high_water(forward), mode
        assert sum(m.mem_peak_bytes for m in result.modules) == result.metrics["mem_peak_bytes"]
        saved = sum(m.mem_saved_for_backward_bytes for m in result.modules)
        assert saved == result.metrics["mem_saved_for_backward_bytes"]


def test_torch_2_11s_profiler_notice_stays_off_stderr_and_other_warnings_pass(monkeypatch):
    """torch 2.11 warns as every profiler starts that a cycle's events are cleared (it broke the
    one line `run` says when its output is closed); the trace silences that notice only: a
    warning from the model it traces still reaches the user, and the filters are restored."""
    import warnings

    real_enter = torch.profiler.profile.__enter__
    notice = (
        "Warning: Profiler clears events at the end of each cycle.Only events from the current "
        "cycle will be reported.To keep events across cycles, set acc_events=True."
    )  # torch 2.11's words

    def enter_like_2_11(self):
        warnings.warn(notice, UserWarning, stacklevel=2)
        return real_enter(self)

    monkeypatch.setattr(torch.profiler.profile, "__enter__", enter_like_2_11)
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with MemoryTrace("cpu").track():
            warnings.warn("the model's own warning", UserWarning, stacklevel=2)
    assert [str(w.message) for w in caught] == ["the model's own warning"]
    assert warnings.filters == filters
