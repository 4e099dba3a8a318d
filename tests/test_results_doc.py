import pytest

from recbole_endo.experiments.results_doc import write_results


@pytest.fixture
def results_tree(tmp_path):
    folder = tmp_path / "results" / "coat-x"
    folder.mkdir(parents=True)
    (folder / "summary.csv").write_text(
        "model,seeds,valid ndcg@10 mean,valid ndcg@10 std,exposed:ndcg@5 mean,exposed:ndcg@5 std\n"
        "Endo,3,0.15,0.01,0.5,0.02\n"
        "BPR,3,0.12,0.02,0.4,0.03\n"
    )
    (folder / "paired.csv").write_text(
        "model,reference,metric,pairs,mean difference,ci low,ci high,wilcoxon p,seed differences,seed ci low,seed ci high\n"
        "BPR,Endo,exposed:ndcg@5,711,-0.1,-0.12,-0.08,0.0001,-0.05 -0.1 -0.15,-0.224,0.024\n"
    )
    (folder / "summary.md").write_text("Command: `python run.py`\nCommit: abc; machine: here.\n\n| model | seeds |\n|---|---|\n")
    (tmp_path / "docs").mkdir()
    spec = tmp_path / "docs" / "results.yaml"
    spec.write_text(
        "intro: Every table below.\n"
        "pages:\n"
        "  - name: coat\n"
        "    title: Coat pages\n"
        "    tables:\n"
        "      - {title: Coat, folder: results/coat-x, text: What it measures., columns: [valid ndcg@10, exposed:ndcg@5]}\n"
    )
    return tmp_path


def add_table(spec, line):
    """``spec`` with one more table on its last page (each spec here ends with its tables)."""
    spec.write_text(spec.read_text() + f"      - {line}\n")


def test_results_document_holds_each_tables_means_paired_cells_provenance_and_plot(results_tree):
    output = results_tree / "docs" / "results"
    write_results(str(results_tree / "docs" / "results.yaml"), str(output))
    text = (output / "coat.md").read_text()
    assert "# Coat pages\n\n[All results](index.md)\n\n## Coat\n\nWhat it measures.\n\nCommand: `python run.py`  \nCommit: abc; machine: here.  \n" in text
    assert "| model | seeds | valid ndcg@10 | exposed:ndcg@5 | Δ exposed:ndcg@5 vs Endo |" in text
    assert "| Endo | 3 | 0.1500 ± 0.0100 | 0.5000 ± 0.0200 | reference |" in text
    assert "| BPR | 3 | 0.1200 ± 0.0200 | 0.4000 ± 0.0300 | -0.1000 [-0.1200, -0.0800]* p 0.0001; seeds [-0.2240, +0.0240] |" in text
    assert "![Coat](figures/coat-x.png)" in text
    assert (output / "figures" / "coat-x.png").read_bytes()[:4] == b"\x89PNG"
    index = (output / "index.md").read_text()
    assert "Every table below.\n\n## Pages\n\n- [Coat pages](coat.md)\n  - [Coat](coat.md#coat)\n" in index


def test_a_column_the_comparison_lacks_is_named(results_tree):
    spec = results_tree / "docs" / "results.yaml"
    spec.write_text(spec.read_text().replace("exposed:ndcg@5]", "tail:ndcg@10]"))
    with pytest.raises(ValueError, match=r"has no column\(s\) \['tail:ndcg@10'\]"):
        write_results(str(spec), str(results_tree / "docs" / "results"))


def test_an_included_table_is_copied_as_written_its_headings_demoted(results_tree):
    (results_tree / "results" / "speed").mkdir()
    (results_tree / "results" / "speed" / "speed.md").write_text("# Speed\n\n| model | s/epoch |\n|---|---|\n| BPR | 0.5 |\n")
    spec = results_tree / "docs" / "results.yaml"
    add_table(spec, "{title: Speed, include: results/speed/speed.md, text: Seconds.}")
    output = results_tree / "docs" / "results"
    write_results(str(spec), str(output))
    assert ("## Speed\n\nSeconds.\n\n`results/speed/speed.md`:\n\n### Speed\n\n| model | s/epoch |\n|---|---|\n| BPR | 0.5 |\n"
            in (output / "coat.md").read_text())


def test_the_readme_headline_shows_the_marks_and_the_index_the_intervals_and_nothing_else_changes(results_tree):
    spec = results_tree / "docs" / "results.yaml"
    spec.write_text(spec.read_text() + (
        "headline:\n"
        "  models: [Endo, BPR, EASE]\n"
        "  columns: [{label: Coat NDCG@5, folder: results/coat-x, metric: exposed:ndcg@5}]\n"
    ))
    readme = results_tree / "README.md"
    readme.write_text("# Title\n\n<!-- headline: written by python -m recbole_endo.experiments.results_doc from docs/results.yaml -->\n"
                      "old table\n<!-- headline end -->\n\nMore.\n")
    write_results(str(spec), str(results_tree / "docs" / "results"), str(readme))
    assert readme.read_text() == (
        "# Title\n\n<!-- headline: written by python -m recbole_endo.experiments.results_doc from docs/results.yaml -->\n"
        "| model | Coat NDCG@5 |\n|---|---|\n"
        "| Endo | 0.500 ± 0.020 |\n"
        "| BPR | 0.400 ± 0.030 * |\n"
        "| EASE | — |\n"
        "<!-- headline end -->\n\nMore.\n")
    assert ("## Headline\n\n| model | Coat NDCG@5 |\n|---|---|\n| Endo | 0.500 ± 0.020 |\n"
            "| BPR | 0.400 ± 0.030 (Δ -0.1000 [-0.1200, -0.0800]*; seeds [-0.2240, +0.0240]) |\n"
            in (results_tree / "docs" / "results" / "index.md").read_text())


def test_a_readme_without_headline_markers_is_refused_and_left_as_it_was(results_tree):
    spec = results_tree / "docs" / "results.yaml"
    spec.write_text(spec.read_text() + "headline: {models: [Endo], columns: []}\n")
    readme = results_tree / "README.md"
    readme.write_text("# Title\n")
    with pytest.raises(ValueError, match="no headline markers"):
        write_results(str(spec), str(results_tree / "docs" / "results"), str(readme))
    assert readme.read_text() == "# Title\n"


def test_two_tables_of_one_folder_keep_two_figures_and_one_provenance(results_tree):
    spec = results_tree / "docs" / "results.yaml"
    add_table(spec, "{title: Coat again, folder: results/coat-x, figure: coat-x-valid, text: Again., columns: [exposed:ndcg@5]}")
    write_results(str(spec), str(results_tree / "docs" / "results"))
    text = (results_tree / "docs" / "results" / "coat.md").read_text()
    assert "## Coat again\n\nAgain.\n\nThe runs of [Coat](#coat) (`results/coat-x`).\n\n| model |" in text
    assert text.count("Command: `python run.py`") == 1
    assert "![Coat again](figures/coat-x-valid.png)" in text
    assert {path.name for path in (results_tree / "docs" / "results" / "figures").iterdir()} == {"coat-x.png", "coat-x-valid.png"}


def test_a_figure_or_page_the_spec_no_longer_names_is_removed_and_nothing_else(results_tree):
    output = results_tree / "docs" / "results"
    figures = output / "figures"
    figures.mkdir(parents=True)
    (figures / "coat-old.png").write_bytes(b"\x89PNG")
    (figures / "notes.txt").write_text("not a plot")
    write_results(str(results_tree / "docs" / "results.yaml"), str(output))
    (output / "notes.md").write_text("# Hand-written\n")
    spec = results_tree / "docs" / "results.yaml"
    spec.write_text(spec.read_text().replace("name: coat", "name: coat-renamed"))
    write_results(str(spec), str(output))
    assert {path.name for path in figures.iterdir()} == {"coat-x.png", "notes.txt"}
    assert {path.name for path in output.glob("*.md")} == {"index.md", "coat-renamed.md", "notes.md"}


def test_results_readme_indexes_each_tables_folder_and_the_records_and_refuses_an_unnamed_folder(results_tree):
    spec = results_tree / "docs" / "results.yaml"
    (results_tree / "results" / "tune").mkdir()
    output = results_tree / "docs" / "results"
    with pytest.raises(ValueError, match="results/ holds tune, which no table or record"):
        write_results(str(spec), str(output))
    assert not output.exists()
    spec.write_text(spec.read_text() + "records:\n  results/tune: the studies.\n")
    write_results(str(spec), str(output))
    index = (results_tree / "results" / "README.md").read_text()
    assert "## [Coat pages](../docs/results/coat.md)\n\n- `results/coat-x`: Coat\n" in index
    assert "## Records\n\n- `results/tune`: the studies.\n" in index
