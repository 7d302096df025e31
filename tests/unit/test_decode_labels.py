"""Input decoding (io.decode) and labels (io.labels): label keys, sizes, class lists, class mapping."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dcompress.errors import InputDataError, UsageError
from dcompress.io.decode import DecodeOptions, decode_sample, shape_mismatch, transform_image
from dcompress.io.labels import assign_classes, read_class_names, sample_label
from dcompress.io.stream import BadSample
from dcompress.io.urls import ResolvedInput
from tests.conftest import png_bytes


def sample(**members) -> dict:
    img = np.zeros((4, 4), dtype=np.uint8)
    return {"__key__": "k1", "__url__": "a.tar", "png": png_bytes(img), **members}


# ----------------------------------------------------------------------------------- label keys

@pytest.mark.parametrize("key, members, want", [
    ("cls", {"cls": b" 7\n"}, 7),
    ("txt", {"txt": b"  dog \n"}, "dog"),
    ("txt", {"txt": b"12"}, 12),                              # integer text is an index
    ("label", {"label": "Ankle boot".encode()}, "Ankle boot"),  # any member, UTF-8 text
    ("json:label", {"json": json.dumps({"label": 3}).encode()}, 3),
    ("json:label", {"json": json.dumps({"label": "cat"}).encode()}, "cat"),
    ("json:label", {"json": json.dumps({"label": "3"}).encode()}, "3"),   # a JSON string stays a name
    ("json:ann.name", {"json": json.dumps({"ann": {"name": " tabby "}}).encode()}, "tabby"),
    ("json:tags.1", {"json": json.dumps({"tags": ["x", "y"]}).encode()}, "y"),      # list index
    ("meta.json:y", {"meta.json": b'{"y": 0}'}, 0),
])
def test_label_key_forms(key, members, want):
    assert sample_label(sample(**members), key) == want
    assert decode_sample(sample(**members), DecodeOptions(label_key=key))[1] == want


@pytest.mark.parametrize("key, members, why", [
    ("cls", {"cls": b"cat"}, "not an integer"),               # .cls stays strictly numeric
    ("txt", {}, "missing .txt label"),
    ("txt", {"txt": b"   "}, "is empty"),
    ("txt", {"txt": b"\xff\xfe"}, "not UTF-8"),
    ("json:label", {"json": b"{not json"}, "not valid JSON"),
    ("json:label", {"json": b'{"other": 1}'}, "missing label field 'label'"),
    ("json:a.b", {"json": b'{"a": {"c": 1}}'}, "missing label field 'a.b'"),
    ("json:label", {"json": b'{"label": true}'}, "a boolean"),
    ("json:label", {"json": b'{"label": 1.5}'}, "a float"),
    ("json:label", {"json": b'{"label": null}'}, "null"),
    ("json:label", {"json": b'{"label": [1]}'}, "a list"),
    ("json:label", {"json": json.dumps({"label": "x" * 300}).encode()}, "not a class name"),
])
def test_bad_labels_are_bad_samples(key, members, why):
    with pytest.raises(BadSample, match=why):
        decode_sample(sample(**members), DecodeOptions(label_key=key))


@pytest.mark.parametrize("kw, why", [
    ({"size": 0}, "--size"), ({"size": 5000}, "--size"), ({"size": True}, "--size"),
    ({"resize_mode": "zoom", "size": 8}, "--resize-mode"), ({"resize_mode": "pad"}, "needs --size"),
    ({"label_key": ""}, "--label-key"), ({"label_key": "txt:x"}, "JSON member"),
    ({"label_key": "json:"}, "field path"), ({"label_key": "json:a..b"}, "field path"),
    ({"label_key": "../cls"}, "not a member name"), ({"channels": 2}, "--channels"),
    ({"class_names": ()}, "empty"), ({"class_names": ("a", "a")}, "appears twice"),
    ({"class_names": ("a", " ")}, "empty or non-string"), ({"max_pixels": 0}, "--max-pixels"),
])
def test_options_are_validated_on_construction(kw, why):
    with pytest.raises(UsageError, match=why) as e:
        DecodeOptions(**kw)
    assert e.value.exit_code == 2


def test_options_dict_is_the_cache_key():
    a = DecodeOptions(size=8, class_names=["b", "a"])
    assert a.class_names == ("b", "a") and hash(a) == hash(DecodeOptions(size=8, class_names=("b", "a")))
    assert a.to_dict() == {"label_key": "cls", "max_pixels": a.max_pixels, "size": 8, "resize_mode": "crop",
                           "channels": None, "class_names": ["b", "a"]}
    json.dumps(a.to_dict())


# --------------------------------------------------------------------------------------- resizing

def _wide() -> np.ndarray:
    """1x2x4 (C, H, W): columns 0, 100, 200, 255."""
    return np.array([[[0, 100, 200, 255]] * 2], dtype=np.uint8)


def test_resize_crop_takes_the_centre_square():
    out = transform_image(_wide(), DecodeOptions(size=2, resize_mode="crop"))
    assert out.shape == (1, 2, 2) and out.dtype == np.uint8
    assert out[0].tolist() == [[100, 200], [100, 200]]       # the centred 2x2 square, not resampled


def test_resize_pad_keeps_everything_on_black():
    out = transform_image(_wide(), DecodeOptions(size=4, resize_mode="pad"))
    assert out.shape == (1, 4, 4)
    assert out[0, 0].tolist() == [0, 0, 0, 0] and out[0, 3].tolist() == [0, 0, 0, 0]   # padding rows
    assert out[0, 1].tolist() == [0, 100, 200, 255] == out[0, 2].tolist()              # image, unscaled


def test_resize_stretch_and_antialiasing():
    out = transform_image(_wide(), DecodeOptions(size=2, resize_mode="stretch"))
    assert out.shape == (1, 2, 2)
    # antialiased 4 -> 2: the triangle filter widens to 2 input pixels, so output 0 weighs columns
    # 0, 1, 2 by 3:3:1 (125 / 1.75 = 71); plain bilinear sampling would give (0 + 100) / 2 = 50
    assert out[0, 0].tolist() == [71, 209] == out[0, 1].tolist()
    big = np.zeros((3, 30, 60), dtype=np.uint8)
    big[:, :, 30:] = 255
    for mode in ("crop", "pad", "stretch"):
        res = transform_image(big, DecodeOptions(size=8, resize_mode=mode))
        assert res.shape == (3, 8, 8)
        assert np.array_equal(res, transform_image(big, DecodeOptions(size=8, resize_mode=mode)))  # deterministic


def test_image_already_at_size_is_untouched():
    img = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
    assert transform_image(img, DecodeOptions(size=4)) is img


def test_channels_conversion():
    gray = np.full((1, 3, 3), 77, dtype=np.uint8)
    rgb = transform_image(gray, DecodeOptions(channels=3))
    assert rgb.shape == (3, 3, 3) and (rgb == 77).all()
    back = transform_image(np.stack([np.full((3, 3), v, np.uint8) for v in (255, 0, 0)]), DecodeOptions(channels=1))
    assert back.shape == (1, 3, 3) and int(back[0, 0, 0]) == 76   # ITU-R 601-2 luma of pure red


def test_shape_mismatch_suggests_the_fix():
    e = shape_mismatch("a.tar", "k9", (3, 40, 50), (3, 32, 32))
    assert isinstance(e, InputDataError) and e.exit_code == 4
    assert "mixed image sizes" in str(e) and "--size" in str(e) and "k9" in str(e) and "a.tar" in str(e)
    e = shape_mismatch("a.tar", "k9", (1, 32, 32), (3, 32, 32))
    assert "mixed channels" in str(e) and "--channels 3" in str(e)


# ----------------------------------------------------------------------------------- class lists

def _inp(tmp_path, manifest=None) -> ResolvedInput:
    (tmp_path / "a.tar").write_bytes(b"x")
    return ResolvedInput(urls=[str(tmp_path / "a.tar")], manifest=manifest)


def test_string_labels_map_in_sorted_order(tmp_path):
    labels, names, source = assign_classes(["dog", "cat", "emu", "cat"], list("abcd"), _inp(tmp_path))
    assert names == ["cat", "dog", "emu"] and labels.tolist() == [1, 0, 2, 0] and source == "labels"


def test_given_class_names_fix_the_order(tmp_path):
    opts = DecodeOptions(class_names=("emu", "dog", "cat"))
    labels, names, source = assign_classes(["dog", "cat", 0], list("abc"), _inp(tmp_path), opts)
    assert names == ["emu", "dog", "cat"] and labels.tolist() == [1, 2, 0] and source == "option"


def test_string_not_in_class_names_is_exit_4(tmp_path):
    with pytest.raises(InputDataError, match="label 'wolf' is not in the class list") as e:
        assign_classes(["dog", "wolf"], ["a", "b7"], _inp(tmp_path), DecodeOptions(class_names=("dog", "cat")))
    assert e.value.exit_code == 4 and e.value.key == "b7"


def test_integer_label_outside_given_names(tmp_path):
    with pytest.raises(InputDataError, match="label 2 outside the class list of 2") as e:
        assign_classes([0, 2], ["a", "b"], _inp(tmp_path), DecodeOptions(class_names=("x", "y")))
    assert e.value.key == "b"


def test_mixed_int_and_string_labels_need_a_class_list(tmp_path):
    with pytest.raises(InputDataError, match="mix integer indices"):
        assign_classes(["dog", 1], ["a", "b"], _inp(tmp_path))


def test_class_list_precedence(tmp_path):
    (tmp_path / "classes.txt").write_text("zebra\nant\n\n")
    inp = _inp(tmp_path)
    assert assign_classes(["ant"], ["a"], inp)[1:] == (["zebra", "ant"], "classes.txt")
    assert assign_classes([1], ["a"], inp)[1:] == (["zebra", "ant"], "classes.txt")
    with_manifest = _inp(tmp_path, {"dcompress": {"class_names": ["ant", "zebra"]}})
    assert assign_classes(["ant"], ["a"], with_manifest)[1:] == (["ant", "zebra"], "manifest")
    opts = DecodeOptions(class_names=("q", "ant"))
    assert assign_classes(["ant"], ["a"], with_manifest, opts)[1:] == (["q", "ant"], "option")
    (tmp_path / "classes.txt").unlink()
    assert assign_classes([0, 2, 1], list("abc"), _inp(tmp_path))[1:] == (["0", "1", "2"], "indices")


@pytest.mark.parametrize("text, why", [
    ("", "empty"), ("a\n\nb\n", "line 2 is empty"), ("a\nb\na\n", "appears twice"), (b"\xff\n", "not UTF-8"),
])
def test_bad_class_names_file(tmp_path, text, why):
    p = tmp_path / "names.txt"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(InputDataError, match=why) as e:
        read_class_names(p, error=InputDataError)
    assert e.value.path == str(p)


def test_class_names_file_strips_and_keeps_order(tmp_path):
    p = tmp_path / "names.txt"
    p.write_text("  n01440764 tench\r\nn01443537 goldfish\n\n")
    assert read_class_names(p) == ("n01440764 tench", "n01443537 goldfish")
    with pytest.raises(UsageError, match="cannot read"):
        read_class_names(tmp_path / "nope.txt")
