"""The gettext corpus builder, on .mo catalogs written by the test."""

import struct


from helpers import MESSAGES_DE, MESSAGES_EN
from fconv_plugin.data import gettext_corpus


def write_mo(path, messages, charset="UTF-8"):
    """A GNU .mo file (the format msgfmt writes): header, sorted original/translation tables."""
    messages = dict(messages)
    messages[""] = f"Content-Type: text/plain; charset={charset}\nPlural-Forms: nplurals=2; plural=(n != 1);\n"
    keys = sorted(messages)
    ids = b"".join(k.encode(charset) + b"\0" for k in keys)
    strs = b"".join(messages[k].encode(charset) + b"\0" for k in keys)
    n = len(keys)
    start = 7 * 4 + 16 * n
    offsets, pos = [], 0
    for k in keys:
        offsets.append((len(k.encode(charset)), start + pos))
        pos += len(k.encode(charset)) + 1
    toffsets, pos = [], 0
    for k in keys:
        v = messages[k].encode(charset)
        toffsets.append((len(v), start + len(ids) + pos))
        pos += len(v) + 1
    header = struct.pack("<7I", 0x950412DE, 0, n, 28, 28 + 8 * n, 0, 0)
    table = b"".join(struct.pack("<2I", *o) for o in offsets) + b"".join(struct.pack("<2I", *o) for o in toffsets)
    path.write_bytes(header + table + ids + strs)


def test_round_trip_of_catalogs(tmp_path):
    locale = tmp_path / "locale"
    (locale / "de" / "LC_MESSAGES").mkdir(parents=True)
    english = [f"Cannot open file number {i}" for i in range(300)]
    write_mo(
        locale / "de" / "LC_MESSAGES" / "a.mo",
        {
            **{e: e.replace("Cannot open file number", "Kann Datei Nummer nicht öffnen:") for e in english},
            "Single": "Einzeln",  # one word: dropped (min 2)
            "menu\x04Open   the\n file": "Datei   öffnen",  # context dropped, whitespace folded
            "%d file removed\x00%d files removed": "%d Datei entfernt\x00%d Dateien entfernt",  # plural
        },
    )
    write_mo(locale / "de" / "LC_MESSAGES" / "b.mo", {english[0]: "zweite Übersetzung"})  # first one wins
    out = tmp_path / "corpus"
    assert gettext_corpus.main(["--locale-dir", str(locale), "--out", str(out), "--min-pairs", "10"]) == 0
    pairs = {}
    for split in ("train", "valid", "test"):
        en = (out / f"{split}.en").read_text(encoding="utf-8").splitlines()
        de = (out / f"{split}.de").read_text(encoding="utf-8").splitlines()
        assert len(en) == len(de)
        for e, d in zip(en, de):
            assert gettext_corpus.split_of(e) == split
            pairs[e] = d
    assert len(pairs) == 302
    assert pairs["Open the file"] == "Datei öffnen"
    assert pairs["%d file removed"] == "%d Datei entfernt"
    assert pairs[english[0]] == "Kann Datei Nummer nicht öffnen: 0"
    assert "Single" not in pairs


def test_clear_message_without_catalogs(tmp_path, capsys):
    assert gettext_corpus.main(["--lang", "xx", "--locale-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no gettext catalogs for language 'xx'" in err and "examples/" in err


def test_placeholders_and_cpp_stay_whole_through_tokenization():
    tok = gettext_corpus.tokenizer("en")
    tokens = tok("Cannot open %s: %1$s, %.*s, %lu%% and {0} with C++ (GID_MAX in /usr/bin, <file>). 50% of it").split()
    for whole in ("%s", "%1$s", "%.*s", "%lu%%", "{0}", "C++", "GID_MAX", "/usr/bin", "&lt;file&gt;"):
        assert whole in tokens, (whole, tokens)
    assert "%" in tokens and "50" in tokens  # a percent sign that is not a placeholder is still split off
    # Moses keeps a backtick on the word it opens (`foo), and so on a placeholder
    assert tok("open `foo' or `%s' now").split()[1:6] == ["`foo", "&apos;", "or", "`%s", "&apos;"]
    plain = gettext_corpus.tokenizer("en", protect=False)("Cannot open %s in C++").split()
    assert plain == ["Cannot", "open", "%", "s", "in", "C", "+", "+"]  # what plain sacremoses does


def test_detokenizer_gives_the_translators_text_back():
    tok, detok = gettext_corpus.tokenizer("de"), gettext_corpus.detokenizer("de")
    for text in (
        "Der Benutzer »%s« existiert nicht, aber --system wurde angegeben.",
        "Kann „%s“ nicht öffnen: %s",
        "Ungültige Konfiguration: GID_MIN (%lu), GID_MAX (%lu)",
        "%s: Kann »%s/%s« nicht erzeugen & schließen",
    ):
        assert detok(tok(text)) == text
    # English has no such quotes: only sacremoses' own rules
    assert (
        gettext_corpus.detokenizer("en")(gettext_corpus.tokenizer("en")("The user `%s' does not exist."))
        == "The user `%s' does not exist."
    )


def test_tokenize_and_detokenize_filter_stdin(monkeypatch, capsys):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("Datei »%s« nicht gefunden\n"))
    assert gettext_corpus.main(["--tokenize", "de"]) == 0
    tokens = capsys.readouterr().out
    assert tokens == "Datei » %s « nicht gefunden\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(tokens))
    assert gettext_corpus.main(["--detokenize", "de"]) == 0
    assert capsys.readouterr().out == "Datei »%s« nicht gefunden\n"


# --------------------------------------------------------------------------- --tokenizer moses_protected
# fairseq's tokenizer registry entry (fconv_plugin/data/tokenizer.py): the tokenization above inside
# fairseq-interactive and the hub interface, against fairseq's own --tokenizer moses.

#: program messages with what fairseq's moses splits: printf/brace placeholders, C++, German quotes


def _fairseq_tokenizer(name, source_lang="en", target_lang="de"):
    """fairseq's build_tokenizer, as fairseq-interactive and the hub call it (the plugin is imported)."""
    import argparse

    from fairseq.data import encoders

    return encoders.build_tokenizer(
        argparse.Namespace(tokenizer=name, source_lang=source_lang, target_lang=target_lang)
    )


def test_moses_protected_is_the_corpus_tokenization_inside_fairseq():
    from fconv_plugin.data.tokenizer import MosesProtectedTokenizer

    ours, moses = _fairseq_tokenizer("moses_protected"), _fairseq_tokenizer("moses")
    assert isinstance(ours, MosesProtectedTokenizer) and (ours.cfg.source_lang, ours.cfg.target_lang) == ("en", "de")
    tok_en, detok_de = gettext_corpus.tokenizer("en"), gettext_corpus.detokenizer("de")
    for text in MESSAGES_EN:
        assert ours.encode(text) == tok_en(text)
    for text in MESSAGES_DE:
        tokens = gettext_corpus.tokenizer("de")(text)
        assert ours.decode(tokens) == detok_de(tokens) == text
    # what fairseq's moses does instead: placeholders and C++ split, never joined, quotes left open
    assert ours.encode(MESSAGES_EN[1]).split()[2:9] == ["%1$s", "for", "{0}", "in", "C++", ":", "%lu%%"]
    assert moses.encode(MESSAGES_EN[1]).split()[2:15] == [
        "%",
        "1",
        "$",
        "s",
        "for",
        "{",
        "0",
        "}",
        "in",
        "C",
        "+",
        "+",
        ":",
    ]
    assert moses.encode("Cannot open file %s").split()[-2:] == ["%", "s"]
    assert ours.decode("Datei » %s « kann nicht geöffnet werden") == MESSAGES_DE[0]
    assert moses.decode("Datei » % s « kann nicht geöffnet werden") == "Datei »% s « kann nicht geöffnet werden"
