"""The roots rule of the data readers (worker/engine/streaming.py): with allowed roots, a data file that
resolves out of them (a symlink) is refused with an error naming it; links that stay inside are read."""

from __future__ import annotations

import pytest

from worker.engine.roots import OutsideRoots
from worker.engine.shards import check_source_inside, list_shards


@pytest.fixture
def layout(tmp_path):
    """root/corpus (a shard, a link within root) and a file outside root."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "corpus").mkdir(parents=True)
    outside.mkdir()
    (root / "corpus" / "a.txt").write_text("text")
    (root / "other.txt").write_text("more text")
    (root / "corpus" / "b.txt").symlink_to(root / "other.txt")
    (outside / "secret.jsonl").write_text('{"text": "not yours"}\n')
    return root.resolve(), outside.resolve()


def test_links_within_the_roots_are_listed(layout):
    root, _ = layout
    names = [p.name for p in list_shards(root / "corpus", roots=[root])]
    assert names == ["a.txt", "b.txt"]
    check_source_inside(root / "corpus", [root])  # no error


def test_a_link_out_of_the_roots_is_refused(layout):
    root, outside = layout
    link = root / "corpus" / "deep" / "c.jsonl"
    link.parent.mkdir()
    link.symlink_to(outside / "secret.jsonl")
    for check in (
        lambda: list_shards(root / "corpus", roots=[root]),
        lambda: check_source_inside(root / "corpus", [root]),
    ):
        with pytest.raises(OutsideRoots, match=f"{link} resolves to {outside / 'secret.jsonl'}"):
            check()
    # Without roots (the CLI, on its user's own files) the link is read as before.
    assert len(list_shards(root / "corpus")) == 3


def test_a_folder_swapped_for_a_link_out_is_refused(layout):
    root, outside = layout
    (root / "swapped").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OutsideRoots, match="swapped"):
        check_source_inside(root / "swapped", [root])
    with pytest.raises(OutsideRoots, match="secret.jsonl"):
        list_shards(root / "swapped", roots=[root])
