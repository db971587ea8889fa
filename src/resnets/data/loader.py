"""Loaders: whole-batch augmentation for in-memory small images, DataLoader for large ones.

Both follow :mod:`resnets.data.order` for which samples form each batch, and both expose
``set_epoch``, ``state_dict``/``load_state_dict`` (the position in the data order), ``__len__``
(batches per epoch on this rank) and ``info``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import torch

from ..errors import InputError
from ..preprocessing import Preprocessing
from ..runtime import torch_threads
from .images import BadImageWarning
from .info import DatasetInfo
from .order import BatchPlan, derive_seed, generator
from .tensor_dataset import TensorImageDataset


def _check_not_empty(plan: BatchPlan) -> None:
    if plan.train and plan.drop_last and plan.n > 0 and len(plan) == 0:
        raise InputError(
            f"batch_size {plan.batch_size} x world_size {plan.world_size} exceeds the {plan.n} training images: "
            "with drop_last every epoch would be empty; use a smaller batch or drop_last=False")


class _Position:
    """Epoch/batch bookkeeping shared by both loaders.

    - ``set_epoch(e)`` starts epoch e from its first batch, unless a ``load_state_dict`` for that
      same epoch is pending: then it keeps the restored batch, so an engine that calls
      ``set_epoch`` at the top of every epoch resumes correctly.
    - Iterating again after a complete pass without ``set_epoch`` moves to the next epoch, so a
      plain ``for epoch ...: for x, y in loader`` reshuffles every epoch.
    """

    def _init_position(self):
        self.epoch = 0
        self.batch = 0
        self._pending_resume = False
        self._finished = False

    def set_epoch(self, epoch: int) -> None:
        if self._pending_resume and epoch == self.epoch:
            return
        self.epoch, self.batch = int(epoch), 0
        self._pending_resume = False
        self._finished = False

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        try:
            epoch, batch = int(state["epoch"]), int(state["batch"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"loader state must be {{'epoch': int, 'batch': int}}, got {state!r}") from exc
        if batch < 0 or epoch < 0:
            raise ValueError(f"loader state has a negative position: {state!r}")
        self.epoch, self.batch = epoch, batch
        self._pending_resume = True
        self._finished = False

    def _begin(self) -> int:
        if self._finished:
            self.epoch, self.batch = self.epoch + 1, 0
        self._finished = False
        self._pending_resume = False
        return self.batch


class BatchLoader(_Position):
    """Batches of a :class:`TensorImageDataset` held on ``device``, augmented a whole batch at a time.

    Training augmentation is the ResNet paper's CIFAR recipe (He et al. 2015, sec. 4.2): pad 4
    pixels on each side, take a random crop of the original size, flip horizontally with p=0.5;
    plus optional Cutout (DeVries & Taylor 2017: a ``cutout``-pixel square, applied after
    normalisation so it becomes the dataset mean). Crop and flip are one gather from a tensor
    padded once up front; the random draws for global batch i of epoch e come from a generator
    seeded by (seed, epoch, i) over the whole global batch, then sliced for this rank.
    """

    def __init__(self, dataset: TensorImageDataset, batch_size: int, *, train: bool, device="cpu", seed: int = 0,
                 crop_padding: int = 4, flip: bool = True, cutout: int = 0, drop_last: bool | None = None,
                 rank: int = 0, world_size: int = 1, channels_last: bool = False, dtype=torch.float32,
                 normalize: bool = True, info: DatasetInfo | None = None, cpu_threads: int | None = 1):
        if not isinstance(dataset, TensorImageDataset):
            raise TypeError(f"BatchLoader needs a TensorImageDataset, got {type(dataset).__name__}; use make_loader")
        if crop_padding < 0 or cutout < 0:
            raise InputError(f"crop_padding and cutout must be >= 0, got {crop_padding}, {cutout}")
        self.dataset = dataset
        self.info = info or dataset.info
        self.train = train
        self.device = torch.device(device)
        self.seed = seed
        self.crop_padding = crop_padding if train else 0
        self.flip = flip and train
        self.cutout = cutout if train else 0
        self.channels_last = channels_last
        self.dtype = dtype
        self.normalize = normalize
        # On the CPU a batch's gather and normalisation (1.5M values for 512 CIFAR images) are too
        # small to share among threads, and on a busy machine OpenMP's spinning threads make them
        # far slower (measured: 0.8 s vs 9.5 s per CIFAR-10 epoch, 1 vs 2 threads, load 8 on 2
        # cores). So batches are prepared with ``cpu_threads`` threads, as DataLoader workers use
        # one; torch's setting is restored before each batch is handed out. None leaves it alone.
        self.cpu_threads = cpu_threads if self.device.type == "cpu" else None
        self.plan = BatchPlan(len(dataset), batch_size, train, train if drop_last is None else drop_last,
                              seed, rank, world_size)
        self.batch_size = batch_size
        _check_not_empty(self.plan)
        self._init_position()
        # The whole set lives on the device once; padding it once makes every crop a plain gather.
        images = dataset.images.to(self.device)
        p = self.crop_padding
        self.images = torch.nn.functional.pad(images, (p, p, p, p)) if p else images
        self.labels = dataset.labels.to(self.device)
        self.height, self.width = dataset.images.shape[2:]
        scale = 255.0
        mean = torch.tensor(self.info.mean, dtype=torch.float32) * scale
        std = torch.tensor(self.info.std, dtype=torch.float32) * scale
        if not normalize:
            mean, std = torch.zeros(3), torch.full((3,), scale)
        self._shift = mean.view(1, 3, 1, 1).to(self.device, dtype)
        self._inv_scale = (1.0 / std).view(1, 3, 1, 1).to(self.device, dtype)
        wp = self.width + 2 * self.crop_padding
        ys = torch.arange(self.height, device=self.device).view(-1, 1) * wp
        xs = torch.arange(self.width, device=self.device)
        self._window = (ys + xs).unsqueeze(0)
        self._window_flipped = (ys + xs.flip(0)).unsqueeze(0)

    def __len__(self) -> int:
        return len(self.plan)

    def preprocessing(self) -> Preprocessing:
        """What inference must do to match these batches: the whole image at the set's size (the
        random pad-crop and flip are training-only), normalised with this loader's statistics."""
        return Preprocessing.whole_image((self.height, self.width), self.info.mean, self.info.std)

    def _draw(self, batch) -> dict[str, torch.Tensor]:
        """Random crop offsets, flips and cutout centres for the global batch, sliced for this rank."""
        g = generator(self.seed, "augment", self.epoch, batch.index)
        n = batch.global_size
        draws = {
            "dy": torch.randint(0, 2 * self.crop_padding + 1, (n,), generator=g),
            "dx": torch.randint(0, 2 * self.crop_padding + 1, (n,), generator=g),
            "flip": torch.rand(n, generator=g) < 0.5,
            "cy": torch.randint(0, self.height, (n,), generator=g),
            "cx": torch.randint(0, self.width, (n,), generator=g),
        }
        return {k: v[batch.lo:batch.hi].to(self.device, non_blocking=True) for k, v in draws.items()}

    def _augment(self, idx: torch.Tensor, d: dict[str, torch.Tensor]) -> torch.Tensor:
        padded = self.images.index_select(0, idx)  # (B, C, H+2p, W+2p); index_select beats [idx] 2x on CPU
        b, c, hp, wp = padded.shape
        # Offsets of a crop's pixels inside a padded image, for unflipped and flipped crops; a
        # crop at (dy, dx) adds dy * wp + dx. One gather then does crop and flip for the batch.
        start = (d["dy"] * wp + d["dx"]).view(b, 1, 1)
        window = torch.where(d["flip"].view(b, 1, 1), self._window_flipped, self._window) if self.flip else self._window
        flat = (start + window).view(b, 1, self.height * self.width).expand(b, c, self.height * self.width)
        return padded.view(b, c, hp * wp).gather(2, flat).view(b, c, self.height, self.width)

    def _cutout(self, x: torch.Tensor, d: dict[str, torch.Tensor]) -> torch.Tensor:
        half = self.cutout // 2
        ys = torch.arange(self.height, device=self.device)
        xs = torch.arange(self.width, device=self.device)
        # Centre anywhere in the image, square clipped at the border (as in DeVries & Taylor's code).
        in_y = (ys[None, :] >= d["cy"][:, None] - half) & (ys[None, :] < d["cy"][:, None] - half + self.cutout)
        in_x = (xs[None, :] >= d["cx"][:, None] - half) & (xs[None, :] < d["cx"][:, None] - half + self.cutout)
        mask = in_y[:, :, None] & in_x[:, None, :]
        return x.masked_fill_(mask[:, None], 0.0)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start = self._begin()
        epoch = self.epoch
        for batch in self.plan.batches(epoch, start):
            with torch_threads(self.cpu_threads):
                x, y = self._prepare(batch)
            self.batch = batch.index + 1  # position = batches handed out, so a checkpoint taken now resumes after this one
            yield x, y
        self._finished = True

    def _prepare(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        idx = batch.indices.to(self.device, non_blocking=True)
        if self.train and (self.crop_padding or self.flip or self.cutout):
            d = self._draw(batch)
            x = self._augment(idx, d) if (self.crop_padding or self.flip) else self.images.index_select(0, idx)
        else:
            d, x = None, self.images.index_select(0, idx)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = x.to(self.dtype).sub_(self._shift).mul_(self._inv_scale)
        if d is not None and self.cutout:
            x = self._cutout(x, d)
        return x, self.labels[idx]


# --- large images ---------------------------------------------------------------------------

def build_transforms(train: bool, info: DatasetInfo, image_size: int = 224, *, resize_size: int | None = None,
                     auto_augment: str | None = None, random_erasing: float = 0.0, flip: bool = True,
                     normalize: bool = True):
    """torchvision transforms v2 for one PIL image -> normalised float tensor.

    Training: RandomResizedCrop + flip (the ImageNet recipe of He et al. 2015, sec. 3.4, as
    torchvision implements it), optional RandAugment / TrivialAugmentWide, RandomErasing.
    Evaluation: resize the shorter side to ``resize_size`` (default 256/224 of the crop), centre crop:
    :class:`resnets.preprocessing.Preprocessing`, the one inference transform.
    """
    from torchvision.transforms import v2

    if not train:
        evaluation = Preprocessing.center_crop(image_size, info.mean, info.std, resize_size)
        return evaluation if normalize else _Unnormalized(evaluation)
    ops = []
    if train:
        ops.append(v2.RandomResizedCrop(image_size, antialias=True))
        if flip:
            ops.append(v2.RandomHorizontalFlip())
        if auto_augment in ("randaugment", "rand"):
            ops.append(v2.RandAugment())
        elif auto_augment in ("trivialaugment", "trivial"):
            ops.append(v2.TrivialAugmentWide())
        elif auto_augment is not None:
            raise InputError(f"auto_augment must be 'randaugment', 'trivialaugment' or None, not {auto_augment!r}")
    ops += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)]
    if normalize:
        ops.append(v2.Normalize(list(info.mean), list(info.std)))
    if train and random_erasing > 0:
        ops.append(v2.RandomErasing(p=random_erasing))
    return v2.Compose(ops)


class _Unnormalized:
    """Resized and cropped pixels scaled to [0, 1], not normalised (picklable, for DataLoader workers)."""

    def __init__(self, preprocessing: Preprocessing):
        self.preprocessing = preprocessing

    def __call__(self, image):
        return self.preprocessing.resize(image).float().div_(255)


def _collate(items):
    """Stack samples; undecodable files (returned as BadFile by the dataset) are dropped and passed on."""
    from .images import BadFile

    bad = [it for it in items if isinstance(it, BadFile)]
    good = [it for it in items if not isinstance(it, BadFile)]
    if not good:
        return None, None, bad
    return torch.stack([img for img, _ in good]), torch.tensor([label for _, label in good]), bad


def _batch_mixer(num_classes: int, mixup_alpha: float, cutmix_alpha: float):
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return None
    from torchvision.transforms import v2

    choices = []
    if mixup_alpha > 0:
        choices.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        choices.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)


class _PlanSampler:
    """A batch sampler yielding [(index, sample_seed), ...] following the loader's plan and position."""

    def __init__(self, loader: FolderLoader):
        self.loader = loader

    def __len__(self):
        return len(self.loader.plan) - self.loader.batch

    def __iter__(self):
        ld = self.loader
        for batch in ld.plan.batches(ld.epoch, ld.batch):
            if ld.train:
                base = derive_seed(ld.seed, "sample", ld.epoch, batch.index)
                seeds = [derive_seed(base, batch.lo + j) for j in range(len(batch.indices))]
            else:
                seeds = [None] * len(batch.indices)
            yield [(int(i), s) if s is not None else int(i) for i, s in zip(batch.indices.tolist(), seeds)]


class FolderLoader(_Position):
    """A DataLoader over a FolderDataset with the BatchLoader interface (same order contract).

    Per-sample randomness is seeded by (seed, epoch, global batch, position in the global batch),
    so results do not depend on the number of workers and match between 1 and N processes.
    MixUp/CutMix mix within a rank's batch and give soft labels (B, num_classes).
    """

    def __init__(self, dataset, batch_size: int, *, train: bool, device="cpu", seed: int = 0,
                 drop_last: bool | None = None, rank: int = 0, world_size: int = 1, num_workers: int | None = None,
                 image_size: int = 224, auto_augment: str | None = None, random_erasing: float = 0.0,
                 mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, flip: bool = True, channels_last: bool = False,
                 dtype=torch.float32, info: DatasetInfo | None = None, transform=None, pin_memory: bool | None = None,
                 crop_padding: int | None = None, cutout: int = 0, normalize: bool = True):
        import os

        from .sources import FolderDataset

        if not isinstance(dataset, FolderDataset):
            raise TypeError(f"FolderLoader needs a FolderDataset, got {type(dataset).__name__}")
        # crop_padding is BatchLoader's pad-and-crop; large images are cropped by
        # RandomResizedCrop instead, so the option is accepted and has no effect here.
        del crop_padding
        if cutout:
            raise InputError(f"cutout={cutout} is for in-memory small images; for large images use "
                             "random_erasing=p (RandomErasing, the same idea per sample)")
        self.info = info or dataset.info
        self.train = train
        self.seed = seed
        self.image_size = int(image_size)
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.dtype = dtype
        self.batch_size = batch_size
        self.plan = BatchPlan(len(dataset), batch_size, train, train if drop_last is None else drop_last,
                              seed, rank, world_size)
        _check_not_empty(self.plan)
        self._init_position()
        self.rank = rank
        self.mixer = _batch_mixer(len(self.info.classes), mixup_alpha, cutmix_alpha) if train else None
        self.bad_files = list(dataset.bad_files)
        view = dataset.subset(range(len(dataset)))  # own copy: the transform is per loader
        view.transform = transform or build_transforms(train, self.info, image_size, auto_augment=auto_augment,
                                                       random_erasing=random_erasing if train else 0.0, flip=flip,
                                                       normalize=normalize)
        self.dataset = view
        workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
        self._loader = torch.utils.data.DataLoader(
            view, batch_sampler=_PlanSampler(self), num_workers=workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda" if pin_memory is None else pin_memory,
            persistent_workers=False)

    def __len__(self) -> int:
        return len(self.plan)

    def preprocessing(self) -> Preprocessing:
        """What inference must do to match: a network trained on random-resized crops of
        ``image_size`` is evaluated on the shorter side resized to 256/224 of it, centre-cropped."""
        if isinstance(self.dataset.transform, Preprocessing):  # an evaluation loader: its own transform
            return self.dataset.transform
        return Preprocessing.center_crop(self.image_size, self.info.mean, self.info.std)

    def __iter__(self):
        start = self._begin()
        for i, (x, y, bad) in enumerate(self._loader, start):
            self.batch = i + 1
            for item in bad:
                if item not in self.bad_files:
                    warnings.warn(f"skipping {item.path}: {item.reason}", BadImageWarning, stacklevel=2)
                    self.bad_files.append(item)
            if x is None:
                continue
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.mixer is not None:
                # MixUp/CutMix pair samples within this rank's batch; torchvision draws from the
                # global generator, so fork it and seed from (seed, epoch, batch, rank).
                with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                    torch.manual_seed(derive_seed(self.seed, "mix", self.epoch, i, self.rank))
                    x, y = self.mixer(x, y)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x.to(self.dtype), y
        self._finished = True


def make_loader(dataset, batch_size: int, *, train: bool, **kwargs):
    """A BatchLoader for a TensorImageDataset, else a FolderLoader (DataLoader + transforms v2).

    Under an initialised torch.distributed process group, ``rank``/``world_size`` default to the
    group's, so each rank reads its own part of every batch.

    An engine can pass one set of options whatever the dataset: options of the other kind of
    loader are dropped when they ask for nothing (0, None, False; ``image_size`` equal to the
    in-memory images' size; ``num_workers`` for in-memory data, which needs none), and refused
    with a message naming them when they would change the result.
    """
    import inspect

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        kwargs.setdefault("rank", dist.get_rank())
        kwargs.setdefault("world_size", dist.get_world_size())
    cls = BatchLoader if isinstance(dataset, TensorImageDataset) else FolderLoader
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "dataset", "batch_size", "train"}
    for key in sorted(set(kwargs) - accepted):
        value = kwargs[key]
        neutral = value is None or value is False or (isinstance(value, int | float) and value == 0)
        if cls is BatchLoader and key == "num_workers":
            neutral = True
        if cls is BatchLoader and key == "image_size":
            size = tuple(dataset.images.shape[2:])
            neutral = value in (size, list(size)) or (size[0] == size[1] and value == size[0])
        if neutral:
            del kwargs[key]
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        given = ", ".join(f"{k}={kwargs[k]!r}" for k in unknown)
        raise TypeError(f"{cls.__name__} ({type(dataset).__name__}) does not take {given}; it takes {sorted(accepted)}")
    return cls(dataset, batch_size, train=train, **kwargs)
