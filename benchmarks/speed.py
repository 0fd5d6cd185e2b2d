"""Speed on this machine: training throughput, FLOP utilisation, sampling time, and the peer.

Training: images/s of forward + backward + train.py's AdamW step (build_optimizer) at batch 8, 128 and 256 px, for fp32,
bf16 as train.py runs it, bf16 with autocast casting the fp32 weights and with the bf16 weight copy
(src/training/low_precision.py) named explicitly, and bf16 + channels_last, with parameter count,
peak RSS (each configuration in its own short subprocess, since ru_maxrss only grows), and FLOPs
per step (torch.utils.flop_counter) divided by the step time, against the bf16 and fp32 matmul
peak measured in the same run.
Sampling: seconds per image at 256 px, 10 and 50 DDIM steps, batch 1 and 8.
Peer: med-seg-diff-pytorch 0.3.3 at a parameter count within 25% of ours, in a worker process
running under benchmarks/.peer-venv, timed alternately with ours (round robin) in the same run.

All timings are medians over rounds that alternate the configurations, because the 2-core machine
is shared and a step can stall whenever another process takes a core.

    python -m benchmarks.speed                 # about 8 minutes
    python -m benchmarks.speed --smoke         # seconds: tiny model, 32 px
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import common
from src.device import select_runtime
from src.training.config import TrainConfig
from src.training.optim import build_optimizer

PRECISIONS = {  # name -> (precision, channels_last, bf16 weight copy: None = as train.py does it)
    "fp32": ("fp32", False, None),
    "bf16": ("bf16", False, None),
    "bf16, autocast casts the weights": ("bf16", False, False),
    "bf16, bf16 weight copy": ("bf16", False, True),
    "bf16+channels_last": ("bf16", True, None),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[128, 256])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up round)")
    p.add_argument("--steps-per-round", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch threads (2 = the whole machine)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd bf16 training")
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--no-sampling", action="store_true")
    p.add_argument(
        "--profile",
        action="store_true",
        help="only profile two bf16 training steps per size (torch.profiler) and write the top operators",
    )
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true")
    # internal modes
    p.add_argument("--rss-probe", nargs=2, metavar=("SIZE", "PRECISION"), help=argparse.SUPPRESS)
    p.add_argument("--peer-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--peer-params", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.sizes, args.batch_size, args.rounds, args.steps_per_round = [32], 2, 1, 1
    args.out = Path(args.out or common.RESULTS / f"speed{'_smoke' if args.smoke else ''}.json")
    return args


def model_config(size: int, smoke: bool):
    from src.models import DiffusionConfig

    if smoke:
        return DiffusionConfig(
            image_size=(size, size), base_channels=8, channel_mults=(1, 2), attention_resolutions=(2,), num_heads=1
        )
    return DiffusionConfig(image_size=(size, size))


def parameter_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def recipe_optimizer(model, runtime):
    """train.py's optimizer: build_optimizer with TrainConfig's lr and weight decay."""
    return build_optimizer(model.parameters(), TrainConfig.lr, TrainConfig.weight_decay, runtime)


def batch(size: int, batch_size: int):
    torch.manual_seed(0)
    return torch.rand(batch_size, 3, size, size), (torch.rand(batch_size, 1, size, size) > 0.5).float()


class Trainer:
    """One model + optimizer + data in one precision/layout; `step()` returns its seconds."""

    def __init__(self, size, precision, channels_last, low_precision_weights, args, compile_model=False):
        from src.models import DiffusionSegmentation
        from src.training.low_precision import LowPrecisionWeights

        self.runtime = select_runtime("cpu", precision, channels_last)
        torch.manual_seed(0)
        self.model = self.runtime.prepare_model(DiffusionSegmentation(model_config(size, args.smoke)))
        if compile_model:
            self.model.unet.compile()
        if low_precision_weights is None:  # what train.py does on this runtime
            low_precision_weights = self.runtime.low_precision_weights
        self.forward = LowPrecisionWeights(self.model, self.runtime.amp_dtype) if low_precision_weights else self.model
        self.optimizer = recipe_optimizer(self.model, self.runtime)
        self.images, self.masks = batch(size, args.batch_size)

    def loss(self):
        with self.runtime.autocast():
            return self.forward(self.images, self.masks)

    def step(self) -> float:
        start = time.perf_counter()
        self.loss().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    def flops_per_step(self) -> float:
        """Expected forward + backward FLOPs of a step (the optimizer's elementwise work is not
        counted). Self-conditioning adds a no-grad forward pass to a random half of the steps, so
        this is the mean of a step with and a step without it (seeds are tried until both occur)."""
        counts = set()
        for seed in range(16):
            torch.manual_seed(seed)
            with FlopCounterMode(display=False) as counter:
                self.loss().backward()
            self.optimizer.zero_grad(set_to_none=True)
            counts.add(counter.get_total_flops())
            if len(counts) == 2:
                break
        return sum(counts) / len(counts)


def matmul_peak(n: int, dtype, repeats: int = 5) -> float:
    """FLOP/s of an n x n matmul (2 n^3 FLOPs), the best of `repeats` after a warm-up."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def rss_probe(size: int, precision_name: str, args) -> None:
    """Subprocess mode: two training steps of one configuration, then print its peak RSS."""
    trainer = Trainer(size, *PRECISIONS[precision_name], args)
    trainer.step()
    trainer.step()
    print(json.dumps({"peak_rss_mib": common.peak_rss_mib()}))


def measure_rss(size: int, precision_name: str, args) -> float:
    command = common.module_command(
        sys.executable,
        "speed",
        "--rss-probe",
        size,
        precision_name,
        "--batch-size",
        args.batch_size,
        "--threads",
        args.threads,
        *(["--smoke"] if args.smoke else []),
    )
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=common.module_env())
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mib"]


# ---------------------------------------------------------------------------------------------
# The peer, in its own venv: a worker that answers one JSON command per line
# ---------------------------------------------------------------------------------------------


def peer_train(state: dict, request: dict) -> dict:
    """The peer's "train" command: `steps` optimizer steps on the set-up batch, and each one's seconds."""
    model, runtime, optimizer, (images, masks) = (state["model"], state["runtime"], state["optimizer"], state["batch"])
    times = []
    for _ in range(request["steps"]):
        start = time.perf_counter()
        with runtime.autocast():
            loss = model(masks, images)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return {"times": times}


def peer_sample(state: dict, request: dict) -> dict:
    """The peer's "sample" command: seconds per p_sample step of its ancestral sampler."""
    # The default sampler is 1,000 ancestral steps; time `steps` of its p_sample and scale.
    model, runtime = state["model"], state["runtime"]
    images = state["batch"][0][: request["batch_size"]]
    x = torch.randn(images.shape[0], 1, *images.shape[-2:])
    with torch.no_grad(), runtime.autocast():
        model.p_sample(x, model.num_timesteps - 1, images)  # warm-up
    start = time.perf_counter()
    with torch.no_grad(), runtime.autocast():
        for t in reversed(range(request["steps"])):
            x, _ = model.p_sample(x, t, images)
    return {"seconds_per_step": (time.perf_counter() - start) / request["steps"], "sampler_steps": model.num_timesteps}


def peer_worker(args) -> None:
    """Reads {"cmd": "setup"|"train"|"sample", ...} lines on stdin, answers one JSON line each."""
    from benchmarks.kvasir import peer_model

    torch.set_num_threads(args.threads)
    state = {}
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "setup":
            size = request["size"]
            torch.manual_seed(0)
            model = peer_model(size, request["dim"], args.smoke)
            runtime = select_runtime("cpu", request["precision"], False)
            state = {
                "model": model,
                "runtime": runtime,
                "batch": batch(size, request["batch_size"]),
                "optimizer": recipe_optimizer(model, runtime),
            }
            reply = {"parameters": parameter_count(model)}
        elif request["cmd"] == "train":
            reply = peer_train(state, request)
        elif request["cmd"] == "sample":
            reply = peer_sample(state, request)
        else:
            reply = {"error": f"unknown command {request['cmd']}"}
        print(json.dumps(reply), flush=True)


class PeerClient:
    def __init__(self, args):
        command = common.module_command(
            common.PEER_PYTHON,
            "speed",
            "--peer-worker",
            "--threads",
            args.threads,
            *(["--smoke"] if args.smoke else []),
        )
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=common.module_env()
        )

    def ask(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the peer worker died (see its stderr above)")
        return json.loads(line)

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)


def peer_dim(target: int, size: int, smoke: bool) -> int:
    """The peer Unet dim whose parameter count is closest to `target` (asks a throwaway worker)."""
    if smoke:
        return 8

    done = subprocess.run(
        [
            str(common.PEER_PYTHON),
            "-c",
            f"from benchmarks.kvasir import peer_dim_for; print(peer_dim_for({target}, {size}))",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=common.module_env(),
    )
    return int(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------


def make_trainers(args) -> dict:
    """(size, precision name) -> Trainer for every size and precision (and bf16+compile where asked)."""
    configs = {(size, name): PRECISIONS[name] for size in args.sizes for name in PRECISIONS}
    trainers = {key: Trainer(key[0], *value, args) for key, value in configs.items()}
    if args.compile:
        for size in args.sizes:
            configs[(size, "bf16+compile")] = PRECISIONS["bf16"]
            trainers[(size, "bf16+compile")] = Trainer(size, *PRECISIONS["bf16"], args, compile_model=True)
    return trainers


def start_peer(args, result: dict, trainers: dict):
    """The peer's worker set up with about ours' parameters at the first size (result["peer"]), or None."""
    if args.no_peer or not common.PEER_PYTHON.exists():
        return None
    size = args.sizes[0]
    ours_params = parameter_count(trainers[(size, "bf16")].model)
    dim = peer_dim(ours_params, size, args.smoke)
    peer = PeerClient(args)
    reply = peer.ask(cmd="setup", size=size, dim=dim, precision="bf16", batch_size=args.batch_size)
    result["peer"] = {
        "package": "med-seg-diff-pytorch 0.3.3",
        "unet_dim": dim,
        "parameters": reply["parameters"],
        "ours_parameters": ours_params,
        "size": size,
        "precision": "bf16",
    }
    return peer


def training_rounds(args, trainers: dict, peer) -> tuple[dict, dict, list]:
    """Alternated rounds of steps: each trainer's step seconds, its warm-up round's seconds, the peer's."""
    times = {key: [] for key in trainers}
    warmup_seconds = {}  # round 0: oneDNN's kernel choice, and torch.compile's compilation where asked
    peer_times = []
    for round_index in range(args.rounds + 1):  # round 0 warms up (oneDNN kernels, allocator)
        for key, trainer in trainers.items():
            torch.manual_seed(round_index)  # every configuration draws the same self-conditioning coins
            elapsed = [trainer.step() for _ in range(args.steps_per_round)]
            if round_index:
                times[key] += elapsed
            else:
                warmup_seconds[key] = sum(elapsed)
        if peer is not None:
            elapsed = peer.ask(cmd="train", steps=args.steps_per_round)["times"]
            if round_index:
                peer_times += elapsed
        print(
            f"round {round_index}: " + ", ".join(f"{k[0]}px {k[1]} {np.median(v):.2f}s" for k, v in times.items() if v),
            flush=True,
        )
    return times, warmup_seconds, peer_times


def training_rows(args, result: dict, trainers: dict, times: dict, warmup_seconds: dict) -> list:
    """One row per trainer: median step time, throughput, FLOPs against the matmul peak, peak memory."""
    peaks = {
        "bf16": matmul_peak(256 if args.smoke else 4096, torch.bfloat16),
        "fp32": matmul_peak(256 if args.smoke else 2048, torch.float32),
    }
    result["matmul_peak_tflops"] = {k: v / 1e12 for k, v in peaks.items()}
    rows = []
    flops = {}
    for (size, name), trainer in trainers.items():
        if size not in flops:
            flops[size] = trainers[(size, "fp32")].flops_per_step()
        seconds = float(np.median(times[(size, name)]))
        achieved = flops[size] / seconds
        peak = peaks["fp32" if name == "fp32" else "bf16"]
        rows.append(
            {
                "size": size,
                "precision": name,
                "batch": args.batch_size,
                "step_seconds": seconds,
                "step_seconds_all": times[(size, name)],
                "images_per_second": args.batch_size / seconds,
                "warmup_round_seconds": warmup_seconds[(size, name)],
                "parameters": parameter_count(trainer.model),
                "gflops_per_step": flops[size] / 1e9,
                "achieved_tflops": achieved / 1e12,
                "share_of_peak": achieved / peak,
                # (the smoke run probes one configuration only, to stay within seconds)
                "peak_rss_mib": None
                if name.endswith("compile") or (args.smoke and name != "bf16")
                else measure_rss(size, name, args),
            }
        )
    return rows


def time_training(args, result: dict) -> None:
    trainers = make_trainers(args)
    peer = start_peer(args, result, trainers)
    times, warmup_seconds, peer_times = training_rounds(args, trainers, peer)
    rows = training_rows(args, result, trainers, times, warmup_seconds)
    result["training"] = rows
    if peer is not None:
        seconds = float(np.median(peer_times))
        result["peer"].update(
            step_seconds=seconds, step_seconds_all=peer_times, images_per_second=args.batch_size / seconds
        )
        ours = next(r for r in rows if r["size"] == result["peer"]["size"] and r["precision"] == "bf16")
        result["peer"]["ours_over_peer_training"] = ours["images_per_second"] / result["peer"]["images_per_second"]
    del trainers
    return peer


def time_sampling(args, result: dict, peer) -> None:
    """Seconds per image of DDIM sampling (bf16, the model as the predictor prepares it), sizes x
    steps x batch, alternating with the peer."""
    from src.models import DiffusionSegmentation

    runtime = select_runtime("cpu", "bf16", False)
    sizes = [32] if args.smoke else [256, 128]
    step_counts = [2] if args.smoke else [10, 50]
    rows = []
    for size in sizes:
        torch.manual_seed(0)
        model = runtime.prepare_inference_model(DiffusionSegmentation(model_config(size, args.smoke)))
        for batch_size in (1, 8):
            images = torch.rand(batch_size, 3, size, size)
            with runtime.autocast():
                model.sample(images, steps=1, seed=0)  # warm-up
            for steps in step_counts:
                if size == 128 and steps == 50 and batch_size == 1:
                    continue  # not asked for; keeps the run short
                start = time.perf_counter()
                with runtime.autocast():
                    model.sample(images, steps=steps, seed=0)
                seconds = time.perf_counter() - start
                rows.append(
                    {
                        "size": size,
                        "batch": batch_size,
                        "steps": steps,
                        "seconds_per_image": seconds / batch_size,
                        "seconds_per_step_per_batch": seconds / steps,
                    }
                )
                print(
                    f"sampling {size}px batch {batch_size}, {steps} steps: {seconds / batch_size:.2f} s/image",
                    flush=True,
                )
        if peer is not None and size == result["peer"]["size"]:
            probe = 2 if args.smoke else 20
            for batch_size in (1, 8):
                reply = peer.ask(cmd="sample", steps=probe, batch_size=batch_size)
                per_image = reply["seconds_per_step"] * reply["sampler_steps"] / batch_size
                result["peer"][f"default_sampler_seconds_per_image_batch{batch_size}"] = per_image
                result["peer"]["default_sampler_steps"] = reply["sampler_steps"]
                print(
                    f"peer {size}px batch {batch_size}: {per_image:.1f} s/image "
                    f"(from {probe} of {reply['sampler_steps']} steps)",
                    flush=True,
                )
                ours_step = next(
                    r["seconds_per_step_per_batch"] for r in rows if r["size"] == size and r["batch"] == batch_size
                )
                result["peer"][f"ours_seconds_per_step_batch{batch_size}"] = ours_step / batch_size
    result["sampling"] = rows


def profile_training(args) -> None:
    """torch.profiler over four bf16 training steps (after two warm-up steps), per size: the
    operators that take the most CPU time, as a table in results/profile_<size>.txt."""
    from torch.profiler import ProfilerActivity, profile

    for size in args.sizes:
        trainer = Trainer(size, *PRECISIONS["bf16"], args)
        trainer.step(), trainer.step()
        torch.manual_seed(0)  # the same self-conditioning coins (one extra forward pass in four steps) every time
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            for _ in range(4):
                trainer.step()
        table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
        path = args.out.with_name(f"profile_{size}{'_smoke' if args.smoke else ''}.txt")
        path.write_text(
            f"{size} px, batch {args.batch_size}, bf16 as train.py runs it, {args.threads} threads, "
            f"4 training steps, {common.cpu_model()}\n{table}\n"
        )
        print(f"{size} px:\n{table}\nwrote {path}", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.profile:
        profile_training(args)
        return 0
    if args.rss_probe:
        rss_probe(int(args.rss_probe[0]), args.rss_probe[1], args)
        return 0
    if args.peer_worker:
        peer_worker(args)
        return 0
    result = {
        "machine": common.machine_info(),
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "steps_per_round": args.steps_per_round,
        "smoke": args.smoke,
    }
    clock = common.Stopwatch()
    peer = time_training(args, result)
    if not args.no_sampling:
        time_sampling(args, result, peer)
    if peer is not None:
        peer.close()
    result["total_minutes"] = clock.minutes()
    common.write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
