import json

import pytest

from raylsl.config import DataSettings, TaskSettings
from raylsl.data import CATALOG, _convert_lines, load_task, read_examples
from raylsl.errors import DataError


def _task(path, **kw):
    return TaskSettings(name=str(path), **kw)


def test_splits_are_disjoint_deterministic_and_sized(task_file):
    data = DataSettings(test_size=30, val_size=20, seed=3)
    a, b = load_task(_task(task_file), data), load_task(_task(task_file), data)
    assert (a.train, a.validation, a.test) == (b.train, b.validation, b.test)
    assert (len(a.test), len(a.validation), len(a.train)) == (30, 20, 110)
    contexts = [{ex.context for ex in split} for split in (a.train, a.validation, a.test)]
    assert not (contexts[0] & contexts[1] or contexts[0] & contexts[2] or contexts[1] & contexts[2])
    other = load_task(_task(task_file), DataSettings(test_size=30, val_size=20, seed=4))
    assert other.test != a.test


def test_a_file_that_is_not_utf8_names_file_and_line(tmp_path, capsys):
    from raylsl.cli import main

    path = tmp_path / "latin1.jsonl"
    good = json.dumps({"context": "ok", "choices": ["a", "b"], "label": 1}).encode()
    path.write_bytes(good + b"\n" + '{"context": "café", "choices": ["a", "b"], "label": 0}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.jsonl:2: not valid UTF-8 \(byte 0xe9 at column 17\)"):
        read_examples(_task(path))
    assert main(["train", "model=tiny-llama", f"task={path}"]) == 2
    err = capsys.readouterr().err
    assert "latin1.jsonl:2: not valid UTF-8" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_train_size_caps_only_train(task_file):
    splits = load_task(_task(task_file), DataSettings(test_size=10, val_size=5, train_size=7))
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (7, 5, 10)


@pytest.mark.parametrize("line, message", [
    ("{not json", r"bad.jsonl:2: malformed JSON"),
    (json.dumps({"context": "c", "choices": ["a", "b"]}), r"bad.jsonl:2: missing field\(s\) label"),
    (json.dumps({"context": "c", "choices": ["a", "b"], "label": 2}), r"bad.jsonl:2: 'label' must be an integer index"),
    (json.dumps({"context": "c", "choices": ["a"], "label": 0}), r"bad.jsonl:2: 'choices' must be a list of at least 2"),
    (json.dumps({"context": 3, "choices": ["a", "b"], "label": 0}), r"bad.jsonl:2: 'context' must be a string"),
])
def test_malformed_rows_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"context": "ok", "choices": ["a", "b"], "label": 1}) + "\n" + line + "\n")
    with pytest.raises(DataError, match=message):
        read_examples(_task(path))


def test_field_mapping(tmp_path):
    path = tmp_path / "mapped.jsonl"
    path.write_text(json.dumps({"q": "ctx", "opts": ["a", "b", "c"], "y": 2}) + "\n")
    (ex,) = read_examples(_task(path, context_field="q", choices_field="opts", label_field="y"))
    assert (ex.context, ex.choices, ex.label) == ("ctx", ("a", "b", "c"), 2)


def test_csv_through_datasets(tmp_path):
    pytest.importorskip("datasets")
    path = tmp_path / "rows.json"
    path.write_text("\n".join(json.dumps({"context": f"c{i}", "choices": ["a", "b"], "label": i % 2})
                              for i in range(4)))
    assert [ex.label for ex in read_examples(_task(path))] == [0, 1, 0, 1]


def test_unknown_task_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="unknown task 'sarcasmm'.*quartz"):
        read_examples(TaskSettings(name="sarcasmm"))
    with pytest.raises(DataError, match="does not exist"):
        read_examples(_task(tmp_path / "missing.jsonl"))


def test_too_small_for_split(task_file):
    with pytest.raises(DataError, match="has 160 examples but data.test_size"):
        load_task(_task(task_file), DataSettings(test_size=150, val_size=20))


# Rows in the exact format of the evals wheel (copied from its files), converted offline.
CATALOG_ROWS = {
    "sarcasm": ('{"input": [{"role": "system", "content": "Respond with only a 1 or 0"}, {"role": "user", '
                '"content": "inclement weather prevents liar from getting to work"}], "ideal": "1"}',
                ("no", "yes"), 1, "Headline: inclement weather prevents liar from getting to work"),
    "quartz": ('{"input":[{"role":"system","content":"answer"},{"role":"user","content":"As you monitor sound '
               'waves closer to a speaker they become\\n\\n A: louder\\n B: quieter"}],"ideal":"A"}',
               ("louder", "quieter"), 0, "Question: As you monitor sound waves closer to a speaker they become"),
    "socialiqa": ('{"input": [{"role": "user", "content": "Alex found a ring. What will the person who lost want '
                  'to do next? A: throw it in the ocean; B: turn it into lost and found; C: leave the beach."}], '
                  '"ideal": "B"}', ("throw it in the ocean", "turn it into lost and found", "leave the beach"), 1,
                  "Question: Alex found a ring. What will the person who lost want to do next?"),
}


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_catalog_converters(name):
    line, choices, label, context_start = CATALOG_ROWS[name]
    (ex,) = _convert_lines([line], CATALOG[name][1], "w")
    assert (ex.choices, ex.label) == (choices, label)
    assert ex.context.startswith(context_start) and ex.context.endswith("Answer:")


def test_catalog_bad_row_names_line():
    with pytest.raises(DataError, match=r"w:2: malformed row"):
        list(_convert_lines(["", '{"input": [{"content": "no options"}], "ideal": "A"}'], CATALOG["quartz"][1], "w"))
