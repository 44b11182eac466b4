"""The export cache key: the bytes of the checkpoint's files, remembered by their stat so a start does not reread them."""

from __future__ import annotations

import os
from pathlib import Path

from berthing.packaging.export import artifact_dir, checkpoint_hash


def _checkpoint(tmp_path: Path) -> Path:
    folder = tmp_path / "ckpt"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "model.safetensors").write_bytes(b"w" * 4096)
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (folder / "README.md").write_text("not part of the key")
    return folder


def test_the_memo_holds_the_same_hash_and_is_what_a_second_start_reads(tmp_path: Path) -> None:
    folder, memo_dir = _checkpoint(tmp_path), tmp_path / "memo"
    plain = checkpoint_hash(folder, "embed")
    assert checkpoint_hash(folder, "embed", memo_dir) == plain
    [memo] = list(memo_dir.iterdir())
    assert memo.read_text() == plain
    memo.write_text("f" * 24)  # read back as it is: the weights are not hashed again
    assert checkpoint_hash(folder, "embed", memo_dir) == "f" * 24
    assert checkpoint_hash(folder, "classify", memo_dir) == checkpoint_hash(folder, "classify") != plain


def test_rewritten_weights_are_hashed_again_even_with_their_old_size_and_mtime(tmp_path: Path) -> None:
    folder, memo_dir = _checkpoint(tmp_path), tmp_path / "memo"
    before = checkpoint_hash(folder, "embed", memo_dir)
    weights = folder / "model.safetensors"
    stat = weights.stat()
    weights.write_bytes(b"v" * 4096)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as `cp -p` or an unpacked archive would leave it
    after = checkpoint_hash(folder, "embed", memo_dir)
    assert after == checkpoint_hash(folder, "embed") != before
    assert len(list(memo_dir.iterdir())) == 2


def test_files_outside_the_key_leave_it_alone_and_new_files_change_it(tmp_path: Path) -> None:
    folder, memo_dir = _checkpoint(tmp_path), tmp_path / "memo"
    before = checkpoint_hash(folder, "embed", memo_dir)
    (folder / "README.md").write_text("edited")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "lock").write_text("")
    assert checkpoint_hash(folder, "embed", memo_dir) == before
    (folder / "vocab.txt").write_text("[PAD]\n")
    assert checkpoint_hash(folder, "embed", memo_dir) == checkpoint_hash(folder, "embed") != before


def test_a_cache_that_cannot_be_written_still_gives_the_key(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path)
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert checkpoint_hash(folder, "embed", blocked / "memo") == checkpoint_hash(folder, "embed")
    cache = tmp_path / "cache"
    assert artifact_dir(cache, folder, "embed") == cache / "onnx" / checkpoint_hash(folder, "embed")
    assert [p.name for p in (cache / "onnx").iterdir()] == [".hashes"]
