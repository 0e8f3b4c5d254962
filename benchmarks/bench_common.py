"""What the benchmark scripts share: where committed results go, the description of the machine written at
the top of every result, and a dictionary of numbered words for models built without data.

Every script that writes a result describes the machine with :func:`machine` (a dict, for the JSON) and
:func:`machine_line` (one line, for the markdown), so that results from different scripts can be compared
on the same terms: the CPU model, its flags that decide which kernels run, torch's CPU capability, the
variables that limit the instruction set, the threads, and the versions.
"""

import os
import platform
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
#: committed results, one file (markdown, plus its JSON where there is one) per benchmark
RESULTS = os.path.join(HERE, "results")

#: environment variables that change which instructions the kernels use (the AVX2-only emulation)
ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def results_path(name):
    """``benchmarks/results/NAME``: the default output of a benchmark that writes results."""
    return os.path.join(RESULTS, name)


def flag_of_interest(flag):
    """Whether a CPU flag decides which kernels run: vector width and FMA (``avx*``, ``fma``), int8 dot
    products (``*vnni*``), bfloat16 (``*bf16*``) and AMX (``amx*``)."""
    return flag.startswith(("avx", "fma", "amx")) or "vnni" in flag or "bf16" in flag


def cpu_model_and_flags():
    """(model name, all flags) from ``/proc/cpuinfo``, else from ``lscpu``, else (``platform.processor()``,
    no flags)."""
    try:
        first = {}  # the first processor's lines
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                first.setdefault(key.strip(), value.strip())
        if first.get("model name"):
            return first["model name"], first.get("flags", "").split()
    except OSError:
        pass
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        lscpu = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}
        if lscpu.get("Model name"):
            return lscpu["Model name"], lscpu.get("Flags", "").split()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine(), []


def _version(module):
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def machine(device="cpu", threads=None):
    """The machine as a dict: ``cpu`` (model name), ``cpus``, ``cpu_flags`` (those of interest, sorted),
    ``torch``, ``torch_cpu_capability``, ``threads`` (``threads``, else torch's current setting),
    ``isa_environment`` (the ISA-limiting variables set), ``fairseq``, ``python``, ``platform``; on
    ``device="cuda"`` also the GPU, CUDA and the float32 matmul settings."""
    import torch

    model, flags = cpu_model_and_flags()
    info = {
        "cpu": model,
        "cpus": os.cpu_count(),
        "cpu_flags": sorted(f for f in set(flags) if flag_of_interest(f)),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "isa_environment": {k: os.environ[k] for k in ISA_VARIABLES if k in os.environ},
        "fairseq": _version("fairseq"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if device == "cuda":
        info.update(
            gpu=torch.cuda.get_device_name(0),
            cuda=torch.version.cuda,
            float32_matmul_precision=torch.get_float32_matmul_precision(),
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
        )
    return info


def machine_line(info):
    """:func:`machine`'s dict as the one line a result starts with."""
    isa = ", ".join(f"{k}={v}" for k, v in info.get("isa_environment", {}).items()) or "none"
    where = f"{info['cpu']} ({info['cpus']} CPUs)"
    if info.get("gpu"):
        where = f"{info['gpu']} (CUDA {info['cuda']}; host {where})"
    versions = f"torch {info['torch']}" + (f", fairseq {info['fairseq']}" if info.get("fairseq") else "")
    return (
        f"Machine: {where}; CPU flags of interest: {' '.join(info['cpu_flags']) or '-'}; torch CPU capability "
        f"{info['torch_cpu_capability']}; ISA-limiting environment: {isa}; threads: {info['threads']}; "
        f"{versions}, Python {info['python']}."
    )


def numbered_dictionary(size):
    """A fairseq ``Dictionary`` of ``size`` entries: its 4 special symbols, then ``w0``, ``w1``, ..."""
    from fairseq.data import Dictionary

    d = Dictionary()
    for i in range(size - len(d)):
        d.add_symbol(f"w{i}")
    return d
