import dataclasses
import gzip
import pickle

import numpy as np
import pytest
import torch

from cnnbench import data
from cnnbench.data import DataError, DeviceLoader
from tests.conftest import make_images, write_cifar_like, write_idx, write_mnist_like


def test_idx_round_trip_raw_and_gz(tmp_path):
    images, labels = make_images(30, 1, 28, 0)
    for gz in (True, False):
        path = write_idx(tmp_path / f"x{gz}-idx3-ubyte", images[:, 0], gz)
        assert np.array_equal(data.read_idx(path, 3), images[:, 0])
        path = write_idx(tmp_path / f"y{gz}-idx1-ubyte", labels, gz)
        assert np.array_equal(data.read_idx(path, 1), labels)


def test_load_splits_have_promised_shapes(data_root, cache_dir):
    for name, (c, s) in {"mnist": (1, 28), "fashion_mnist": (1, 28), "cifar10": (3, 32)}.items():
        images, labels = data.load(name, "train", data_root, False, cache_dir)
        assert images.dtype == torch.uint8 and images.shape[1:] == (c, s, s)
        assert labels.dtype == torch.int64 and len(labels) == len(images)
    assert len(data.load("cifar10", "train", data_root, False, cache_dir)[0]) == 5 * 40


def test_cache_is_used_and_follows_its_source(tmp_path, cache_dir, monkeypatch):
    real_decode = data.decode
    root = tmp_path / "root"
    write_mnist_like(root / "mnist", n_train=50, n_test=20)
    first = data.load("mnist", "test", root, False, cache_dir)
    cache = cache_dir / "mnist-test.pt"
    assert cache.is_file()
    cached = torch.load(cache, weights_only=True)
    assert torch.equal(cached["images"], first[0])
    # a hit: the same tensors again, without decoding the source files
    decoded = []
    monkeypatch.setattr(data, "decode", lambda *a: decoded.append(a) or real_decode(*a))
    hit = data.load("mnist", "test", root, False, cache_dir)
    assert decoded == [] and torch.equal(hit[0], first[0]) and torch.equal(hit[1], first[1])
    # a changed source file invalidates the cache
    images, _labels = make_images(20, 1, 28, seed=7)
    write_idx(root / "mnist" / "t10k-images-idx3-ubyte", images[:, 0])
    second = data.load("mnist", "test", root, False, cache_dir)
    assert torch.equal(second[0][:, 0], torch.from_numpy(images[:, 0])) and len(decoded) == 1


def test_corrupt_cache_is_rebuilt(tmp_path, cache_dir):
    root = tmp_path / "root"
    write_mnist_like(root / "mnist", n_train=50, n_test=20)
    good = data.load("mnist", "test", root, False, cache_dir)
    (cache_dir / "mnist-test.pt").write_bytes(b"not a torch file")
    again = data.load("mnist", "test", root, False, cache_dir)
    assert torch.equal(again[0], good[0])
    assert torch.load(cache_dir / "mnist-test.pt", weights_only=True)["images"].shape == (
        20,
        1,
        28,
        28,
    )


def _corrupt(folder, how):
    target = folder / "t10k-images-idx3-ubyte.gz"
    payload = gzip.decompress(target.read_bytes())
    if how == "magic":
        target.write_bytes(gzip.compress(b"\x00\x00\x09\x03" + payload[4:]))
    elif how == "truncated":
        target.write_bytes(gzip.compress(payload[:-100]))
    elif how == "gzip":
        target.write_bytes(target.read_bytes()[:40])
    elif how == "count":  # labels for a different number of images
        write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(7, np.uint8))


@pytest.mark.parametrize(
    "how,words",
    [
        ("magic", "not an IDX file"),
        ("truncated", "truncated"),
        ("gzip", "cannot be read"),
        ("count", "labels"),
    ],
)
def test_corrupt_files_give_clear_error_and_no_cache(tmp_path, cache_dir, how, words):
    write_mnist_like(tmp_path / "mnist", n_train=50, n_test=20)
    _corrupt(tmp_path / "mnist", how)
    with pytest.raises(DataError, match=words):
        data.load("mnist", "test", tmp_path, False, cache_dir)
    assert not (cache_dir / "mnist-test.pt").exists()


@pytest.fixture
def no_system_data(tmp_path, monkeypatch):
    """Stand-in for /usr/share/datasets/fashion-mnist, which may be installed on this machine."""
    fake = tmp_path / "usr-share-datasets-fashion-mnist"
    spec = dataclasses.replace(data.SPECS["fashion_mnist"], system_folders=(str(fake),))
    monkeypatch.setitem(data.SPECS, "fashion_mnist", spec)
    return fake


def test_missing_data_names_every_place_searched(tmp_path, cache_dir, no_system_data):
    with pytest.raises(DataError) as err:
        data.load("fashion_mnist", "train", tmp_path / "nowhere", False, cache_dir)
    message = str(err.value)
    for folder in ("nowhere/fashion-mnist", "nowhere/FashionMNIST/raw", str(no_system_data)):
        assert folder in message
    assert "dataset.root=" in message and "dataset.download=true" in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_failed_download_is_reported(tmp_path, cache_dir, monkeypatch):
    def offline(name, root):
        raise OSError("network is unreachable")

    monkeypatch.setattr(data, "_download", offline)
    with pytest.raises(DataError, match=r"download failed .*network is unreachable"):
        data.load("mnist", "train", tmp_path, True, cache_dir)


def test_cifar_unpickler_refuses_code(tmp_path, cache_dir):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_like(folder, per_batch=4, n_test=4)

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    with pytest.raises(DataError, match=r"refusing to load builtins\.print"):
        data.load("cifar10", "test", tmp_path, False, cache_dir)


def _loader(n=103, batch=10, **kw):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).clone()
    labels = torch.arange(n) % 10
    return DeviceLoader(images, labels, batch, torch.device("cpu"), mean=(0.5,), std=(0.25,), **kw)


def test_loader_covers_every_sample_once_with_last_partial_batch():
    loader = _loader()
    seen = torch.cat([y for _, y in loader])
    assert len(loader) == 11 and len(seen) == 103
    assert torch.equal(seen, torch.arange(103) % 10)


def test_loader_shuffles_by_seed_and_epoch():
    def order(seed, epoch):
        loader = _loader(shuffle=True, seed=seed)
        loader.set_epoch(epoch)
        return torch.cat([x[:, 0, 0, 0] for x, _ in loader])

    assert torch.equal(order(0, 1), order(0, 1))
    assert not torch.equal(order(0, 1), order(0, 2))
    assert not torch.equal(order(0, 1), order(1, 1))
    assert torch.equal(order(0, 1).sort().values, order(0, 2).sort().values)


def test_loader_shards_are_disjoint_and_cover_the_epoch():
    shards = []
    for rank in range(3):
        loader = _loader(shuffle=True, rank=rank, world_size=3)
        loader.set_epoch(4)
        shards.append(torch.cat([x[:, 0, 0, 0] for x, _ in loader]))
    everything = torch.cat(shards)
    assert len(everything) == 103 and len(set(everything.tolist())) == 103


def test_loader_normalises_and_resizes_on_the_device():
    loader = _loader(n=4, batch=4, resize=9)
    x, _ = next(iter(loader))
    assert x.shape == (4, 1, 9, 9) and x.dtype == torch.float32
    assert torch.allclose(x[1], torch.full((1, 9, 9), (1 / 255 - 0.5) / 0.25))
    plain = _loader(n=4, batch=4, normalize=False)
    assert torch.allclose(next(iter(plain))[0][3], torch.full((1, 4, 4), 3 / 255))


def test_limit_batches():
    assert len(_loader(limit_batches=3)) == 3
    assert sum(len(y) for _, y in _loader(limit_batches=3)) == 30


def test_a_root_is_its_own_folder_only_for_the_matching_dataset(
    tmp_path, cache_dir, no_system_data
):
    write_mnist_like(tmp_path / "mnist", n_train=50, n_test=20)
    # pointing at the folder itself works for MNIST ...
    images, _ = data.load("mnist", "test", tmp_path / "mnist", False, cache_dir)
    assert len(images) == 20
    # ... but never passes MNIST's identically named files off as Fashion-MNIST
    with pytest.raises(DataError, match="Fashion-MNIST"):
        data.load("fashion_mnist", "test", tmp_path / "mnist", False, cache_dir)


def test_unwritable_cache_warns_and_still_loads(tmp_path, caplog):
    write_mnist_like(tmp_path / "mnist", n_train=50, n_test=20)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    images, _ = data.load("mnist", "test", tmp_path, False, blocker / "cache")
    assert len(images) == 20
    assert "cannot cache mnist" in caplog.text


def test_system_folder_is_searched_after_the_root(tmp_path, cache_dir, no_system_data):
    write_mnist_like(no_system_data, n_train=50, n_test=20)
    images, _ = data.load("fashion_mnist", "test", tmp_path / "empty-root", False, cache_dir)
    assert len(images) == 20


def test_a_download_lands_where_the_next_search_finds_it(tmp_path, cache_dir, monkeypatch):
    """torchvision's layout (root/MNIST/raw/) is searched after a download."""
    calls = []

    def fake_download(name, root):
        calls.append(name)
        write_mnist_like(root / "MNIST" / "raw", n_train=30, n_test=10)

    monkeypatch.setattr(data, "_download", fake_download)
    images, _ = data.load("mnist", "test", tmp_path, True, cache_dir)
    assert len(images) == 10 and calls == ["mnist"]
    data.load("mnist", "train", tmp_path, True, cache_dir)
    assert calls == ["mnist"]  # found on disk the second time


@pytest.mark.parametrize("how", ["truncated", "not a pickle", "wrong shape"])
def test_corrupt_cifar_batches_give_clear_error_and_no_cache(tmp_path, cache_dir, how):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_like(folder, per_batch=4, n_test=4)
    target = folder / "test_batch"
    if how == "truncated":
        target.write_bytes(target.read_bytes()[:100])
    elif how == "not a pickle":
        target.write_bytes(b"hello")
    else:
        with open(target, "wb") as f:
            pickle.dump({b"data": np.zeros((4, 10), np.uint8), b"labels": [0] * 4}, f)
    with pytest.raises(DataError, match="test_batch"):
        data.load("cifar10", "test", tmp_path, False, cache_dir)
    assert not (cache_dir / "cifar10-test.pt").exists()


@pytest.mark.parametrize("size,most_off", [(224, 0.0), (96, 0.02), (20, 0.05)])
def test_device_resize_agrees_with_torchvision_resize_of_a_pil_image(size, most_off):
    """The textbooks resize PIL images with torchvision; cnnbench resizes on the device."""
    from PIL import Image
    from torchvision import transforms

    images = torch.randint(0, 256, (8, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    resize, to_tensor = transforms.Resize(size), transforms.ToTensor()
    pil = [to_tensor(resize(Image.fromarray(im[0].byte().numpy(), mode="L"))) for im in images]
    theirs = torch.stack(pil) * 255
    ours = data.resize_like_pil(images.float(), size)
    diff = (ours - theirs).abs()
    assert diff.max() <= 1
    assert (diff > 0.5).float().mean() <= most_off
