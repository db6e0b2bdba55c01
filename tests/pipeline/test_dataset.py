from pathlib import Path

import pytest

from am.dataset import DatasetLayout
from am.errors import InputError


def make_group(root, group, *names):
    folder = root / "source" / group
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_bytes(b"x")
    return folder


def test_groups_are_the_folders_under_source_sorted(tmp_path):
    make_group(tmp_path, "b", "img.png")
    make_group(tmp_path, "a", "img.tif")
    layout = DatasetLayout(tmp_path)
    assert layout.groups() == ["a", "b"]
    assert layout.groups(["b"]) == ["b"]
    assert layout.source_image("a").name == "img.tif"


def test_empty_or_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        DatasetLayout(tmp_path / "missing").groups()
    with pytest.raises(InputError, match="no source/ folder"):
        DatasetLayout(tmp_path).groups()
    (tmp_path / "source").mkdir()
    with pytest.raises(InputError, match="no group folders"):
        DatasetLayout(tmp_path).groups()


def test_unknown_selected_group_lists_the_available_ones(tmp_path):
    make_group(tmp_path, "a", "img.png")
    with pytest.raises(InputError, match="zz.*available: a"):
        DatasetLayout(tmp_path).groups(["zz"])


def test_a_group_named_with_the_trailing_slash_a_shell_completes_is_that_group(tmp_path):
    make_group(tmp_path, "slide_1", "img.png")
    assert DatasetLayout(tmp_path).groups(["slide_1/"]) == ["slide_1"]


def test_a_source_folder_given_as_the_dataset_names_the_dataset_to_give(tmp_path):
    make_group(tmp_path, "a", "img.png")
    with pytest.raises(InputError, match=rf"a source/ folder itself: pass the dataset that holds it, {tmp_path}"):
        DatasetLayout(tmp_path / "source").groups()


def test_the_source_folder_given_as_dot_from_inside_it_gets_the_same_hint(tmp_path, monkeypatch):
    make_group(tmp_path, "a", "img.png")
    monkeypatch.chdir(tmp_path / "source")
    with pytest.raises(InputError, match=rf"a source/ folder itself: pass the dataset that holds it, {tmp_path}"):
        DatasetLayout(Path(".")).groups()


def test_a_folder_named_like_an_image_is_called_a_folder(tmp_path):
    (make_group(tmp_path, "g") / "scan.tif").mkdir()
    with pytest.raises(InputError, match=r"has no image \(scan.tif: a folder, not an image file\)"):
        DatasetLayout(tmp_path).source_image("g")


def test_group_without_image_or_with_two_images(tmp_path):
    make_group(tmp_path, "empty", "notes.txt")
    make_group(tmp_path, "two", "a.png", "b.tiff")
    layout = DatasetLayout(tmp_path)
    with pytest.raises(InputError, match="has no image"):
        layout.source_image("empty")
    with pytest.raises(InputError, match="2 images.*a.png, b.tiff"):
        layout.source_image("two")


def test_group_names_that_cannot_be_keys_are_rejected(tmp_path):
    make_group(tmp_path, "bad name", "img.png")
    with pytest.raises(InputError, match="bad name"):
        DatasetLayout(tmp_path).groups()


def test_a_group_without_an_image_names_what_it_holds(tmp_path):
    """A JPEG or a link to a moved file is not "no image" to its owner: say what was found instead."""
    make_group(tmp_path, "jpeg", "a.jpg")
    (tmp_path / "source" / "link").mkdir()
    (tmp_path / "source" / "link" / "a.png").symlink_to(tmp_path / "moved.png")
    layout = DatasetLayout(tmp_path)
    with pytest.raises(InputError, match=r"holds a.jpg, a JPEG file, which is not read \(only .tif, .tiff and .png "
                                         r"are: lossless, 8 or 16 bit\); convert it, e.g. python -c .*"
                                         rf"cv2.imwrite\('{tmp_path}/source/jpeg/a.png', "
                                         rf"cv2.imread\('{tmp_path}/source/jpeg/a.jpg'"):
        layout.source_image("jpeg")
    with pytest.raises(InputError, match=r"has no image \(a.png: a link to nothing\)"):
        layout.source_image("link")


def test_the_folder_a_mac_leaves_when_unzipping_is_not_a_group(tmp_path):
    make_group(tmp_path, "g1", "a.png")
    make_group(tmp_path, "__MACOSX", "._a.png")
    assert DatasetLayout(tmp_path).groups() == ["g1"]


def test_images_put_straight_into_source_are_told_where_to_go(tmp_path):
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "slide 1.tif").write_bytes(b"II*\x00")
    with pytest.raises(InputError, match=r"holds slide 1.tif but no group folders; move each image into a folder "
                                         r"of its own \(a group: letters, digits, '.', '_' and '-'\), e.g. "
                                         r".*source/slide_1/slide 1.tif"):
        DatasetLayout(tmp_path).groups()
