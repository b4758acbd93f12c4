"""The typed schemas of the `dataset` and `trainer` groups: every key they may hold, its type
and its default, in one place. Registered in Hydra's ConfigStore as `schema/dataset` and
`schema/trainer`, which the YAML files of those groups extend through their defaults list
(Hydra's structured-config schema pattern). A misspelt key or a value of the wrong type is
refused when the config is composed; config.RULES then checks the ranges.
"""

from __future__ import annotations

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class DatasetConfig:
    """The data and its loader (data.load, data.DeviceLoader)."""

    name: str = "???"  # mnist, fashion_mnist or cifar10 (datasets.SPECS)
    # searched first; then the system folders; then a torchvision download into this folder
    root: str = "data"
    download: bool = True
    cache_dir: str = "${oc.env:CNNBENCH_CACHE,'~/.cache/cnnbench'}"
    batch_size: int = 256
    resize: int | None = None  # the side the images are resized to on the device
    normalize: bool = True  # false: plain ToTensor scaling to [0, 1], as most textbooks
    # training images held out for validation (chosen by trainer.seed); 0 as in the textbooks
    val_size: int = 0
    # on-device augmentation of the training batches (off in the textbooks): a random shift by
    # up to this many pixels (zero fill, as a padded random crop), and random horizontal flips
    translate: int = 0
    flip: bool = False


@dataclass
class TrainerConfig:
    """The loop (train.train) and the engine's switches."""

    epochs: int = 10
    device: str = "auto"  # auto: cuda when present, then mps, else cpu
    seed: int = 0
    log_every_n_steps: int = 50  # train/loss is logged every this many optimizer steps
    eval_batch_size: int = 1000
    label_smoothing: float = 0.0
    # stop each epoch after this many batches (quick smoke runs); null trains on every batch
    limit_train_batches: int | None = None
    # evaluate on only this many test batches (smoke runs; the accuracy is then a subset's)
    limit_test_batches: int | None = None
    # continue a stopped run in its own directory: a run directory, a checkpoint (.pt), or auto
    # (the newest run under outputs/ with the same config; none: a new run)
    resume: str | None = None
    # 32, bf16, 16-mixed or auto: autocast to bfloat16 or float16 (float16 with a gradient
    # scaler); auto is bf16 on CUDA GPUs and CPUs with bfloat16 units, else 32
    # (docs/performance.md says what each buys)
    precision: str = "32"
    compile: bool = False  # torch.compile the model; the first steps pay for compiling
    # record the training step once as a CUDA graph and replay it for every full batch: auto
    # (on CUDA where it is safe), true (the same, and on other devices the step's uncaptured
    # static form) or false (the plain step); cnnbench/cuda_graph.py
    cuda_graph: str = "auto"
    # the same bits on every run and resume on a GPU too: deterministic kernels (slower), no
    # cuDNN autotuning; on the CPU runs are deterministic already
    deterministic: bool = False
    # float32 matrix products: highest (full float32, PyTorch's default), high (TF32 on
    # Ampere and later GPUs, as convolutions already use) or medium (bfloat16 passes)
    matmul_precision: str = "highest"
    channels_last: bool = False  # channels-last (NHWC) layout for the model and its batches
    # intra-op CPU threads; null: the usable cores, shared with the processes that run
    # together (joblib's n_jobs, torchrun's processes, other cnnbench runs; cnnbench/cores.py)
    threads: int | None = None
    # test-time augmentation of the evaluation after the last epoch (the run's test_acc): none,
    # flip, translate or flip_translate; the logits of each image are averaged over its mirror
    # and its one-pixel shifts (tta.TestTimeAugmentation). Earlier epochs evaluate plainly.
    tta: str = "none"


def register() -> None:
    store = ConfigStore.instance()
    store.store(group="schema", name="dataset", node=DatasetConfig)
    store.store(group="schema", name="trainer", node=TrainerConfig)


register()
