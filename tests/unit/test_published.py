"""fairseq's published ConvS2S models by name (fconv_plugin/hub.py) and old checkpoints
(fconv_plugin/convert/legacy.py, convert/archive.py), without network: the test archives
have the published layout (a top directory with model.pt written the old way -- ``args``
Namespace, no ``cfg``, legacy keys, old optimizer layout, legacy torch serialization --
dict.en.txt, dict.fr.txt, bpecodes) and hold small fairseq models; the download function
is replaced by a copy of a local file."""

import argparse
import io
import os
import shutil
import tarfile

import pytest
import torch
from fairseq.data import Dictionary

from helpers import SELF_ATT_BASE_SMALL as BASE_SMALL
from helpers import SELF_ATT_WP_SMALL as WP_SMALL
from helpers import (
    StubTask,
    dict_bytes,
    fairseq_wp_fusion,
    old_fconv_state,
    perturb_,
    save_old,
    words_dictionary,
    write_tar,
)
from fconv_plugin import hub
from fconv_plugin.convert import ConversionError, convert_checkpoint
from fconv_plugin.convert import archive as archive_mod
from fconv_plugin.convert.legacy import upgrade_legacy_checkpoint
from fconv_plugin.models import FConvExtModel
from fconv_plugin.models.fconv_ext_self_att import FConvExtSelfAttModel

torch.set_num_threads(1)

SENTENCES = ["Hello world!", "the house is small", "a big cat"]
WMT_URL = hub.FCONV_MODELS["conv.wmt14.en-fr"]["path"]
STORIES_URL = hub.FCONV_SELF_ATT_MODELS["conv.stories"]["path"]


class FakeDownload:
    """hub.download replaced: the archive for each address is copied into ``cache`` once, as
    fairseq's cached_path does; ``calls`` counts the calls."""

    def __init__(self, cache, archives):
        self.cache, self.archives, self.calls = cache, archives, []

    def __call__(self, url):
        self.calls.append(url)
        target = os.path.join(self.cache, url.rsplit("/", 1)[-1] + ".etag")
        if not os.path.exists(target):
            shutil.copy(self.archives[url], target)
            with open(target + ".json", "w") as f:
                f.write('{"url": "%s", "etag": null}' % url)
        return target


@pytest.fixture
def counting_conversions(monkeypatch):
    calls = []
    real = archive_mod.convert_directory

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(hub, "_convert_directory", spy)  # the converter from_pretrained calls
    return calls


def test_hub_names_and_addresses_are_fairseqs():
    from fairseq.models.fconv import FConvModel
    from fairseq.models.fconv_self_att import FConvModelSelfAtt

    assert FConvExtModel.hub_models() == FConvModel.hub_models()
    assert FConvExtSelfAttModel.hub_models() == FConvModelSelfAtt.hub_models()


def test_published_name_converts_once_and_translates_like_fairseq(
    wmt_archive, tmp_path, monkeypatch, counting_conversions
):
    from fairseq.models.fconv import FConvModel

    archive, extracted = wmt_archive
    fake = FakeDownload(str(tmp_path), {WMT_URL: archive})
    monkeypatch.setattr(hub, "download", fake)
    ours = FConvExtModel.from_pretrained("conv.wmt14.en-fr").eval()
    assert len(counting_conversions) == 1 and fake.calls == [WMT_URL]
    converted = tmp_path / hub.CONVERTED_SUBDIR / "wmt14.v2.en-fr.fconv-py.tar.bz2.etag"
    assert sorted(os.listdir(converted)) == sorted(["model.pt", "dict.en.txt", "dict.fr.txt", "bpecodes", hub.COMPLETE])
    assert sorted(os.listdir(tmp_path / hub.CONVERTED_SUBDIR)) == [converted.name]  # the extraction is gone
    state = torch.load(converted / "model.pt", weights_only=True)  # plain data: no allow-listing needed
    assert state["cfg"]["model"]["_name"] == "fconv_ext" and state["cfg"]["model"]["max_source_positions"] == 62

    reference = FConvModel.from_pretrained(str(extracted), tokenizer="moses", bpe="subword_nmt").eval()
    for sentence in SENTENCES:
        expected = reference.generate(reference.encode(sentence), beam=5)
        got = ours.generate(ours.encode(sentence), beam=5)
        assert [h["tokens"].tolist() for h in got] == [h["tokens"].tolist() for h in expected]
        assert [h["score"].item() for h in got] == pytest.approx([h["score"].item() for h in expected], abs=1e-4)
        assert ours.translate(sentence, beam=5) == reference.translate(sentence, beam=5)

    again = FConvExtModel.from_pretrained("conv.wmt14.en-fr")  # the cached conversion
    assert len(counting_conversions) == 1 and len(fake.calls) == 2
    assert again.translate(SENTENCES[0], beam=5) == reference.translate(SENTENCES[0], beam=5)


# ---------------------------------------------------------------- the stories pair (model fusion)


def stories_args(arch, **overrides):
    from fairseq.models import ARCH_CONFIG_REGISTRY

    args = argparse.Namespace(
        arch=arch,
        max_source_positions=64,
        max_target_positions=64,
        source_lang="wp_source",
        target_lang="wp_target",
        data=["/private/home/stories"],
        lr=0.25,
        **overrides,
    )
    ARCH_CONFIG_REGISTRY[arch](args)
    return args


@pytest.fixture(scope="module")
def stories_archive(tmp_path_factory):
    """A stories_checkpoint.tar.gz-like archive: a pretrained fconv_self_att and the fusion model whose
    args name the pretrained checkpoint by the absolute path it was trained with (fairseq #207)."""
    from fairseq.models.fconv_self_att import FConvModelSelfAtt

    root = tmp_path_factory.mktemp("stories")
    torch.manual_seed(0)
    src, tgt = words_dictionary(), words_dictionary(extra=5)
    task = StubTask(src, tgt)
    pre_args = stories_args("fconv_self_att", **BASE_SMALL)
    pretrained = FConvModelSelfAtt.build_model(pre_args, task)
    perturb_(pretrained, seed=1)
    args = stories_args(
        "fconv_self_att_wp",
        **WP_SMALL,
        pretrained="True",
        pretrained_checkpoint="/checkpoint/stories/pretrained/checkpoint_best.pt",
    )
    encoder, decoder, fusion = fairseq_wp_fusion(src, tgt, pretrained)  # fairseq's fusion model
    perturb_(encoder, seed=2)
    perturb_(decoder, seed=3)  # includes the pretrained decoder's (shared) weights
    files = {"dict.wp_source.txt": dict_bytes(src), "dict.wp_target.txt": dict_bytes(tgt)}
    for name, a, m in [("pretrained_checkpoint.pt", pre_args, pretrained), ("fusion_checkpoint.pt", args, fusion)]:
        weights = m.state_dict()
        weights["decoder.convolutions.0._linearized_weight"] = torch.zeros(2)
        save_old(
            {
                "args": a,
                "model": weights,
                "optimizer_history": [
                    {"criterion_name": "CrossEntropyCriterion", "optimizer": {"state": {}}, "best_loss": 4.0}
                ],
                "extra_state": {"epoch": 3},
            },
            root / name,
        )
        files[name] = (root / name).read_bytes()
    path = root / "stories_checkpoint.tar.gz"
    write_tar(path, "", files, mode="w:gz")
    extracted = root / "extracted"
    extracted.mkdir()
    for name, data in files.items():
        (extracted / name).write_bytes(data)
    return path, extracted


def test_stories_pair_resolves_the_pretrained_checkpoint_in_the_archive(
    stories_archive, tmp_path, monkeypatch, counting_conversions
):
    from fairseq.models.fconv_self_att import FConvModelSelfAtt

    archive, extracted = stories_archive
    monkeypatch.setattr(hub, "download", FakeDownload(str(tmp_path), {STORIES_URL: archive}))
    fusion = FConvExtSelfAttModel.from_pretrained("conv.stories", tokenizer=None).eval()
    base = FConvExtSelfAttModel.from_pretrained("conv.stories.pretrained", tokenizer=None).eval()
    assert len(counting_conversions) == 1  # one archive, converted once for both names
    converted = tmp_path / hub.CONVERTED_SUBDIR / "stories_checkpoint.tar.gz.etag"
    state = torch.load(converted / "fusion_checkpoint.pt", weights_only=True)
    assert state["cfg"]["model"]["pretrained_checkpoint"] == str(converted / "pretrained_checkpoint.pt")

    # fairseq itself, given the path the way its hub entry does (relative to the data directory)
    ref_fusion = FConvModelSelfAtt.from_pretrained(
        str(extracted),
        checkpoint_file="fusion_checkpoint.pt",
        pretrained="True",
        pretrained_checkpoint="./pretrained_checkpoint.pt",
        tokenizer=None,
    ).eval()
    ref_base = FConvModelSelfAtt.from_pretrained(
        str(extracted), checkpoint_file="pretrained_checkpoint.pt", tokenizer=None
    ).eval()
    for ours, ref in [(fusion, ref_fusion), (base, ref_base)]:
        for sentence in ["Hello world !", "the big cat is small"]:  # one at a time: fairseq does not mask padding
            got, expected = ours.generate(ours.encode(sentence), beam=5), ref.generate(ref.encode(sentence), beam=5)
            assert [h["tokens"].tolist() for h in got] == [h["tokens"].tolist() for h in expected]
            assert [h["score"].item() for h in got] == pytest.approx([h["score"].item() for h in expected], abs=1e-4)


# ---------------------------------------------------------------- broken archives and downloads


def _assert_nothing_left(cache):
    left = os.listdir(os.path.join(cache, hub.CONVERTED_SUBDIR))
    assert left == [], left


@pytest.mark.parametrize("member", ["../evil", "/tmp/h15-evil-absolute", "symlink", "hardlink", "device"])
def test_unsafe_archive_is_refused_and_deleted(tmp_path, monkeypatch, member):
    cache = tmp_path / "cache"
    cache.mkdir()
    bad = tmp_path / "bad.tar.bz2"
    with tarfile.open(bad, "w:bz2") as tar:
        ok = tarfile.TarInfo("wmt/dict.en.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"a\n"))
        info = tarfile.TarInfo(member if "evil" in member else f"wmt/{member}")
        if member == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif member == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, "wmt/dict.en.txt"
        elif member == "device":
            info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
        else:
            info.size = 4
        tar.addfile(info, io.BytesIO(b"evil") if info.isfile() else None)
    fake = FakeDownload(str(cache), {WMT_URL: bad})
    monkeypatch.setattr(hub, "download", fake)
    with pytest.raises(hub.PublishedModelError) as err:
        FConvExtModel.from_pretrained("conv.wmt14.en-fr")
    message = str(err.value)
    assert "refusing to extract" in message and WMT_URL in message and "has been deleted" in message
    assert "from_pretrained('/path/to/wmt14.v2.en-fr.fconv-py.tar.bz2')" in message
    assert not os.path.exists(tmp_path / "evil") and not os.path.exists("/tmp/h15-evil-absolute")
    assert os.listdir(cache) == [hub.CONVERTED_SUBDIR]  # the download and its note deleted
    _assert_nothing_left(cache)


def test_truncated_download_is_deleted_and_reported(wmt_archive, tmp_path, monkeypatch):
    archive, _ = wmt_archive
    truncated = tmp_path / "truncated.tar.bz2"
    data = archive.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setattr(hub, "download", FakeDownload(str(cache), {WMT_URL: truncated}))
    with pytest.raises(hub.PublishedModelError) as err:
        FConvExtModel.from_pretrained("conv.wmt14.en-fr")
    message = str(err.value)
    assert "truncated or corrupt" in message and WMT_URL in message and "load again to download it again" in message
    assert os.listdir(cache) == [hub.CONVERTED_SUBDIR]
    _assert_nothing_left(cache)


def test_corrupt_checkpoint_inside_an_archive_is_reported_by_name(wmt_archive, tmp_path, monkeypatch):
    _, extracted = wmt_archive
    bad = tmp_path / "bad.tar.bz2"
    files = {n: (extracted / n).read_bytes() for n in os.listdir(extracted)}
    files["model.pt"] = files["model.pt"][:5000]
    write_tar(bad, "wmt14.en-fr.fconv-py", files)
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setattr(hub, "download", FakeDownload(str(cache), {WMT_URL: bad}))
    with pytest.raises(hub.PublishedModelError) as err:
        FConvExtModel.from_pretrained("conv.wmt14.en-fr")
    message = str(err.value)
    assert "model.pt" in message and "truncated or corrupt" in message and "has been deleted" in message
    assert os.listdir(cache) == [hub.CONVERTED_SUBDIR]
    _assert_nothing_left(cache)


def test_failed_download_names_the_address_and_the_manual_way(monkeypatch):
    def offline(url):  # what requests raises offline (a ConnectionError is an OSError)
        raise OSError(f"Max retries exceeded with url: {url} (Temporary failure in name resolution)")

    monkeypatch.setattr(hub, "download", offline)
    with pytest.raises(hub.PublishedModelError) as err:
        FConvExtModel.from_pretrained("conv.wmt14.en-de")
    message = str(err.value)
    url = hub.FCONV_MODELS["conv.wmt14.en-de"]["path"]
    assert f"could not download {url}" in message and f"curl -LO {url}" in message
    assert "from_pretrained('/path/to/wmt14.en-de.fconv-py.tar.bz2')" in message


def test_unknown_name_lists_the_published_ones():
    with pytest.raises(
        hub.PublishedModelError, match="conv.wmt14.en-fr, conv.wmt14.en-de|conv.wmt14.en-de, conv.wmt14.en-fr"
    ):
        FConvExtModel.from_pretrained("conv.wmt15.xx")


def test_a_checkpoint_file_is_not_taken_for_an_archive(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"not a tar archive")
    with pytest.raises(hub.PublishedModelError, match="is a file but not a tar archive: give the directory"):
        FConvExtModel.from_pretrained(str(tmp_path / "model.pt"))


def test_local_archive_file_loads(wmt_archive, tmp_path):
    archive, extracted = wmt_archive
    local = tmp_path / archive.name
    shutil.copy(archive, local)
    hub_ = FConvExtModel.from_pretrained(str(local), tokenizer="moses", bpe="subword_nmt")
    assert hub.is_converted_directory(str(local) + ".fconv_ext")
    assert isinstance(hub_.translate("Hello world!"), str)


# ---------------------------------------------------------------- old checkpoints, dictionaries


def test_legacy_fields_are_upgraded_without_touching_the_input():
    src, tgt = words_dictionary(), words_dictionary(extra=3)
    state = old_fconv_state(src, tgt)
    before_args = dict(vars(state["args"]))
    new = upgrade_legacy_checkpoint(state)
    assert vars(state["args"]) == before_args and "optimizer" in state  # the input is unchanged
    assert not any(k.endswith("_linearized_weight") for k in new["model"])
    assert any(k.endswith("_linearized_weight") for k in state["model"])
    a = new["args"]
    assert (a.max_source_positions, a.max_target_positions, a.task, a.data, a.lr) == (
        64,
        64,
        "translation",
        "/checkpoint/wmt14_en_fr",
        [0.5],
    )
    assert a.share_input_output_embed is False  # filled by the arch preset
    assert a.post_process == "@@ " and a.stop_min_lr == 1e-4 and not hasattr(a, "min_lr")
    assert new["optimizer_history"] == [
        {
            "criterion_name": "CrossEntropyCriterion",
            "optimizer_name": "FairseqNAG",
            "lr_scheduler_state": {"best": 3.5},
            "num_updates": 0,
        }
    ]
    assert new["extra_state"]["train_iterator"] == {"epoch": 12, "iterations_in_epoch": 0}
    converted = convert_checkpoint(state)
    assert converted["optimizer_history"][-1]["lr_scheduler_state"] == {"best": 3.5}
    assert converted["cfg"]["model"]["max_target_positions"] == 62  # position table: 64 rows, 2 unused


def test_decoder_version_1_weight_norm_converts_to_the_same_function():
    """fairseq < 0.5 normalised the decoder convolutions over dim 0 (decoder.version 1).  fairseq 0.12's
    loader no longer runs FConvDecoder.upgrade_state_dict (FairseqDecoder's no-op upgrade_state_dict_named
    is found first) and fails with a size mismatch; the converter keeps the weight fairseq's upgrade computes."""
    from fconv_plugin.models import build_model_from_config

    src, tgt = words_dictionary(), words_dictionary(extra=3)
    state, reference = old_fconv_state(src, tgt, version=1, with_model=True)
    assert state["model"]["decoder.convolutions.0.weight_g"].shape == (3, 1, 1)
    converted = convert_checkpoint(state)
    ext = build_model_from_config(converted["cfg"]["model"], src, tgt).eval()
    ext.load_state_dict(converted["model"], strict=True)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, len(src), (3, 7), generator=g)
    prev = torch.randint(4, len(tgt), (3, 5), generator=g)
    lengths = torch.full((3,), 7)
    with torch.no_grad():
        expected = reference.get_normalized_probs(reference(tokens, lengths, prev), log_probs=True)
        got = ext.get_normalized_probs(ext(tokens, lengths, prev), log_probs=True)
    assert (got - expected).abs().max().item() < 1e-5


def test_dictionary_padding_and_wrong_dictionaries(tmp_path):
    src, tgt = words_dictionary(), words_dictionary(extra=3)  # 4 + 21 = 25 and 28 symbols
    padded_src, padded_tgt = words_dictionary(), words_dictionary(extra=3)
    padded_src.pad_to_multiple_(8)
    padded_tgt.pad_to_multiple_(8)
    state = old_fconv_state(padded_src, padded_tgt)  # embedding tables of 32 rows
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    save_old(state, model_dir / "model.pt")
    (model_dir / "dict.en.txt").write_bytes(dict_bytes(src))  # the archive's dictionaries: without the padding
    (model_dir / "dict.fr.txt").write_bytes(dict_bytes(tgt))
    archive_mod.convert_directory(str(model_dir), str(tmp_path / "out"))
    for lang, original in [("en", src), ("fr", tgt)]:
        d = Dictionary.load(str(tmp_path / "out" / f"dict.{lang}.txt"))
        assert len(d) == 32 and d.symbols[: len(original)] == original.symbols
        assert d.symbols[len(original) :] == [f"madeupword{i:04d}" for i in range(32 - len(original))]

    (model_dir / "dict.fr.txt").write_bytes(dict_bytes(words_dictionary(extra=20)))  # 45 symbols: not padding
    with pytest.raises(ConversionError) as err:
        archive_mod.convert_directory(str(model_dir), str(tmp_path / "out2"))
    assert "dict.fr.txt has 45 symbols" in str(err.value) and "model.pt has 32 embedding rows" in str(err.value)
    assert not os.path.exists(tmp_path / "out2")


# ---------------------------------------------------------------- the command line
