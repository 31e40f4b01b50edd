"""Mixed precision for every trainer: what ``mixed_precision="auto"`` means on this machine, and the Accelerator
built with it.

* ``"auto"``: bf16 autocast on a GPU, and on a CPU with native bf16 matrix instructions (AVX-512 BF16
  or AMX, asked of torch's cpuinfo, never assumed, unless ``HISTO_CPU_BF16`` says otherwise); fp32
  elsewhere. Master weights stay fp32 either way.
* :func:`make_accelerator` builds the Accelerator at that precision, and lets one process build
  Accelerators of different precisions in turn (:func:`allow_precision_change`), as a notebook does.
* :func:`cpu_in_words` names the processor and its bf16 kind for records and model cards.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch


MIXED_PRECISIONS = ("auto", "bf16", "fp16", "no")

# "1": "auto" treats this CPU as one with native bf16 (AVX-512 BF16 or AMX), "0": as one without; unset: ask torch.
# The suite runs both ways (README, "Tests and CI"), so a machine of either kind is tested on its own paths and the
# other's. On a CPU without native bf16, "1" makes "auto" train in emulated bf16: correct, and about 17x slower.
CPU_BF16_ENV = "HISTO_CPU_BF16"


def _cpu_bf16_override() -> bool | None:
    value = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if not value:
        return None
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise ValueError(f"{CPU_BF16_ENV} must be 1 (treat the CPU as bf16-native) or 0 (as not), got {value!r}")


def cpu_has_native_bf16(capabilities: dict | None = None) -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX-512 BF16 or AMX-BF16), as torch's cpuinfo
    reports it, unless ``HISTO_CPU_BF16`` says otherwise. Without them, bf16 autocast on a CPU is emulated and
    slower than fp32. Given ``capabilities`` (a dict like ``torch.cpu.get_capabilities()``), those are read."""
    if capabilities is None:
        override = _cpu_bf16_override()
        if override is not None:
            return override
        get = getattr(torch.cpu, "get_capabilities", None)
        if get is None:  # older torch: the private probes
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        capabilities = get()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def cpu_in_words() -> str:
    """This machine's processor for a record or card: model, cores and its bf16 kind, e.g.
    "AMD EPYC, 2 cores, AVX-512 BF16 (native bf16)" or "..., AVX2 only (bf16 emulated)"."""
    import platform

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    get = getattr(torch.cpu, "get_capabilities", None)
    capabilities = get() if get else {}
    if capabilities.get("amx_bf16"):
        kind = "AMX (native bf16)"
    elif capabilities.get("avx512_bf16"):
        kind = "AVX-512 BF16 (native bf16)"
    elif capabilities.get("avx512f") or capabilities.get("avx512"):
        kind = "AVX-512 without BF16 (bf16 emulated)"
    else:
        kind = "AVX2 only (bf16 emulated)"
    return f"{model}, {os.cpu_count()} cores, {kind}"


def resolve_mixed_precision(setting: str, cuda: bool | None = None, cpu_bf16: bool | None = None) -> str:
    """The precision ``setting`` means here: ``"auto"`` is ``"bf16"`` on CUDA or on a CPU with native
    bf16 (:func:`cpu_has_native_bf16`), ``"no"`` (fp32) otherwise; any other setting is kept as it is."""
    if setting not in MIXED_PRECISIONS:
        raise ValueError(f"mixed_precision must be one of {MIXED_PRECISIONS}, got {setting!r}")
    if setting != "auto":
        return setting
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda:
        return "bf16"
    return "bf16" if (cpu_has_native_bf16() if cpu_bf16 is None else cpu_bf16) else "no"


def allow_precision_change() -> None:
    """Let a single process build Accelerators of different precisions one after another.

    Accelerate keeps one process-wide state and refuses a second ``Accelerator(mixed_precision=...)`` of another
    precision ("AcceleratorState has already been initialized and cannot be changed"). In a notebook that is the
    normal case: one of our trainers ran in bf16 ("auto" on a bf16-native CPU), then a cell builds its own
    ``Accelerator(mixed_precision="no")``, or the other way round. Between bf16 and fp32 the state matters only to
    autocast, and our trainers autocast at their own precision (:meth:`AcceleratedTrainer.autocast`; a prepared
    model's forward keeps the autocast it was prepared with), so a new precision resets the state, with a warning
    that says so. Earlier Accelerators then *report* the new precision. fp16 is different: Accelerate unscales its
    gradients by the process-wide setting, so a change to or from fp16 is refused, with a message that says what to
    do. Multi-process runs (``accelerate launch``) keep Accelerate's check. Idempotent; :func:`make_accelerator`
    installs it, so it is in force once any of our trainers has been built.
    """
    from accelerate.state import AcceleratorState, PartialState

    check = AcceleratorState._check_initialized
    if getattr(check, "allows_precision_change", False):
        return

    def _check_initialized(self, mixed_precision=None, cpu=None):
        wanted = None if mixed_precision is None else str(mixed_precision).lower()
        if (self.initialized and wanted is not None and wanted != self._mixed_precision
                and self.__dict__.get("num_processes", 1) == 1):
            if "fp16" in (wanted, self._mixed_precision):
                raise ValueError(
                    f"this process already trains with mixed_precision={self._mixed_precision!r} and Accelerate "
                    f"unscales fp16 gradients by that one process-wide setting, so an Accelerator with "
                    f"{wanted!r} cannot follow it here: restart the kernel, or use {self._mixed_precision!r}")
            warnings.warn(f"histolab_utils: Accelerate's process-wide precision was {self._mixed_precision!r} "
                          f"(an earlier trainer or Accelerator); reset to {wanted!r} for this Accelerator. Our trainers "
                          "built before keep autocasting at their own precision.", stacklevel=4)
            AcceleratorState._shared_state.clear()
            self.__dict__.update(PartialState._shared_state)
            return None
        return check(self, mixed_precision, cpu)

    _check_initialized.allows_precision_change = True
    AcceleratorState._check_initialized = _check_initialized


def make_accelerator(mixed_precision: str, grad_accumulation: int = 1):
    """An Accelerator with the precision :func:`resolve_mixed_precision` picks for ``mixed_precision``; it may
    follow an Accelerator of another precision in the same process (:func:`allow_precision_change`)."""
    from accelerate import Accelerator

    allow_precision_change()
    mixed_precision = resolve_mixed_precision(mixed_precision)
    with warnings.catch_warnings():  # our own trainers changing precision in turn is expected, not news
        warnings.filterwarnings("ignore", message="histolab_utils: Accelerate's process-wide precision")
        # cpu=True on a machine without CUDA: without it, a multi-process CPU launch (torchrun) is
        # not joined into one process group and every rank trains alone as "rank 0".
        accelerator = Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accumulation,
                                  cpu=not torch.cuda.is_available())
    accelerator.histolab_precision = mixed_precision
    return accelerator
