"""Taxonomy: the bundled ProfileBench taxonomy (paper Table 6), aliases, custom YAML, validation."""

import re
import textwrap

import pytest

from verl_confprofile.taxonomy import Taxonomy, TaxonomyError, normalize_label

# Table 6 of the paper, with ASCII hyphens (DESIGN.md: canonical spelling) and "NA" for Unknown(NA).
TABLE_6 = {
    "gender": ["Female", "Male", "NA"],
    "age": ["0-18", "18-23", "24-30", "31-40", "41-50", "50+", "NA"],
    "industry": [
        "Agriculture and Fishery", "Manufacturing", "Real Estate and Construction", "Commerce and Retail",
        "Transport and Logistics", "High-Tech", "Services", "Finance", "Education and Training", "Healthcare",
        "Media, Culture, Sports and Entertainment", "Government and Public Institutions", "Not Employed", "NA",
    ],
    "occupation": [
        "Software", "Clerical Staff", "Education and Trainer", "Beauty and Hairdressing", "Skilled Workers",
        "Government and Public Sector", "Transportation and Logistics", "Hospitality and Entertainment",
        "Media and Culture", "Independent Media", "Healthcare", "Agriculture and Fishery", "Finance and Insurance",
        "Self-Employed", "Domestic and Security", "Student", "High-Tech Hardware", "Retiree", "Homemaker", "NA",
    ],
    "education": ["Junior High or Below", "Senior/Vocational High", "Bachelor/Associate", "Postgraduate or Above", "NA"],
    "life_stage": [
        "Single", "In Relationship", "Pre-Marital", "Married, No Children", "Pre-Pregnancy and Pregnancy",
        "Parenting (Child 0-2)", "Parenting (Child 3-5)", "Parenting (Child 6-11)", "Parenting (Child 12-14)",
        "Parenting (Child 15-17)", "Parenting (Adult Child)", "Parenting (Child Age Unknown)", "NA",
    ],
}


@pytest.fixture(scope="module")
def tax():
    return Taxonomy.load()


def write(tmp_path, text, name="tax.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# ---------------------------------------------------------------- bundled taxonomy (Table 6)


def test_bundled_taxonomy_has_table6_dimensions_and_counts(tax):
    assert tax.keys == ("gender", "age", "industry", "occupation", "education", "life_stage")
    counts = {d.key: len(d.labels) for d in tax}
    assert counts == {"gender": 3, "age": 7, "industry": 14, "occupation": 20, "education": 5, "life_stage": 13}
    for dim in tax:
        assert dim.na == "NA"
        assert "NA" in dim.labels


def test_bundled_labels_are_exactly_table6_in_order(tax):
    # Order matters: it is the last voting tie-break.
    assert {d.key: list(d.labels) for d in tax} == TABLE_6
    for dim in tax:
        assert [dim.rank(label) for label in dim.labels] == list(range(len(dim.labels)))


def test_load_by_bundled_name_and_default_are_the_same(tax):
    assert Taxonomy.load("profilebench").keys == tax.keys
    assert len(tax) == 6
    assert tax["age"].key == "age"


def test_unknown_bundled_name_is_a_taxonomy_error():
    with pytest.raises(TaxonomyError, match="no_such_taxonomy"):
        Taxonomy.load("no_such_taxonomy")


# ---------------------------------------------------------------- aliases


@pytest.mark.parametrize(
    "dim, raw, expected",
    [
        ("age", "18\u201323", "18-23"),  # en dash, as printed in Table 6
        ("age", "18\u201423", "18-23"),  # em dash
        ("age", "18 - 23", "18-23"),  # spaces around the hyphen
        ("age", " 50+ ", "50+"),
        ("gender", "Unknown", "NA"),
        ("gender", "Unknown(NA)", "NA"),  # Table 6's spelling
        ("gender", "unknown (na)", "NA"),
        ("gender", "N/A", "NA"),
        ("gender", "na", "NA"),
        ("gender", "male", "Male"),
        ("gender", "FEMALE", "Female"),
        ("gender", "  Male\t", "Male"),
        ("education", "senior / vocational high", "Senior/Vocational High"),
        ("life_stage", "Parenting (Child 0\u20132)", "Parenting (Child 0-2)"),
        ("life_stage", "married,  no children", "Married, No Children"),
        ("industry", "media, culture, sports and entertainment", "Media, Culture, Sports and Entertainment"),
        ("industry", "Unknown(NA)", "NA"),
    ],
)
def test_aliases_map_to_canonical_labels(tax, dim, raw, expected):
    assert tax[dim].canonical(raw) == expected


@pytest.mark.parametrize(
    "dim, raw",
    [("gender", "Other"), ("gender", ""), ("age", "18"), ("age", "18-24"), ("age", "1823"), ("occupation", "Students")],
)
def test_out_of_set_strings_are_not_labels(tax, dim, raw):
    assert tax[dim].canonical(raw) is None


def test_normalize_label_folds_case_dashes_and_spaces():
    assert normalize_label("  Parenting  (Child 3\u20135) ") == "parenting (child 3-5)"
    assert normalize_label("Senior / Vocational High") == "senior/vocational high"


# ---------------------------------------------------------------- custom taxonomy


def test_custom_yaml_taxonomy_with_other_dimensions(tmp_path):
    path = write(
        tmp_path,
        """\
        na_label: Unknown
        dimensions:
          pet_owner:
            name: Pet owner
            labels: [Dog, Cat, None of them, Unknown]
          device:
            labels: [iOS, Android, Unknown]
            aliases:
              iOS: [iphone, ipad]
        """,
    )
    tax = Taxonomy.load(path)
    assert tax.keys == ("pet_owner", "device")
    assert tax.source == str(path)
    pet, device = tax["pet_owner"], tax["device"]
    assert pet.name == "Pet owner"
    assert device.name == "Device"  # default name from the key
    assert pet.labels == ("Dog", "Cat", "None of them", "Unknown")
    assert pet.na == "Unknown"
    assert pet.canonical("cat") == "Cat"
    assert pet.canonical("N/A") == "Unknown"  # the generic NA aliases point at this taxonomy's NA label
    assert device.canonical("iPhone") == "iOS"  # a declared alias
    assert device.canonical("Windows") is None
    assert pet.rank("Dog") < pet.rank("Cat") < pet.rank("Unknown")


def test_custom_taxonomy_from_dict():
    tax = Taxonomy.from_dict({"dimensions": {"color": {"labels": ["red", "blue", "NA"]}}})
    assert tax.keys == ("color",)
    assert tax["color"].canonical(" Blue ") == "blue"
    assert tax["color"].canonical("unknown") == "NA"


# ---------------------------------------------------------------- validation errors


def assert_error(tmp_path, text, *fragments):
    path = write(tmp_path, text)
    with pytest.raises(TaxonomyError) as info:
        Taxonomy.load(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_duplicate_label_is_an_error(tmp_path):
    assert_error(
        tmp_path,
        """\
        dimensions:
          gender:
            labels: [Female, Male, Male, NA]
        """,
        "dimensions.gender",
        "duplicate",
    )


@pytest.mark.parametrize("twin", ["male", " Male ", "MALE"])
def test_labels_equal_after_normalisation_are_duplicates(tmp_path, twin):
    assert_error(
        tmp_path,
        f"""\
        dimensions:
          gender:
            labels: [Male, "{twin}", NA]
        """,
        "dimensions.gender",
        "duplicate",
    )


def test_dash_variants_are_duplicates(tmp_path):
    assert_error(
        tmp_path,
        """\
        dimensions:
          age:
            labels: ["18-23", "18\u201323", NA]
        """,
        "dimensions.age",
        "duplicate",
    )


def test_missing_na_is_an_error(tmp_path):
    assert_error(
        tmp_path,
        """\
        dimensions:
          gender:
            labels: [Female, Male]
        """,
        "dimensions.gender",
        "NA",
    )


def test_missing_custom_na_label_is_an_error(tmp_path):
    assert_error(
        tmp_path,
        """\
        na_label: Unknown
        dimensions:
          gender:
            labels: [Female, Male, NA]
        """,
        "dimensions.gender",
        "Unknown",
    )


@pytest.mark.parametrize("labels", ["[]", "[NA]"])
def test_empty_dimension_is_an_error(tmp_path, labels):
    assert_error(
        tmp_path,
        f"""\
        dimensions:
          gender:
            labels: [Female, Male, NA]
          hobby:
            labels: {labels}
        """,
        "dimensions.hobby",
        "empty",
    )


def test_dimension_without_labels_is_an_error(tmp_path):
    assert_error(
        tmp_path,
        """\
        dimensions:
          hobby:
            name: Hobby
        """,
        "dimensions.hobby",
    )


def test_no_dimensions_is_an_error(tmp_path):
    assert_error(tmp_path, "dimensions: {}\n", "dimensions")


@pytest.mark.parametrize("key", ["Age", "1age", "life-stage", "life stage", "_age"])
def test_bad_key_is_an_error(tmp_path, key):
    assert_error(
        tmp_path,
        f"""\
        dimensions:
          "{key}":
            labels: [a, b, NA]
        """,
        f"dimensions.{key}",
        "key",
    )


@pytest.mark.parametrize("key", ["tag", "score", "evidence", "think"])
def test_keys_that_collide_with_inner_tags_are_errors(tmp_path, key):
    # A block <score>...<score>5</score></score> can never be parsed consistently.
    assert_error(
        tmp_path,
        f"""\
        dimensions:
          {key}:
            labels: [a, b, NA]
        """,
        f"dimensions.{key}",
    )


def test_label_with_angle_bracket_is_an_error(tmp_path):
    assert_error(
        tmp_path,
        """\
        dimensions:
          gender:
            labels: [Female, "<Male>", NA]
        """,
        "dimensions.gender",
    )


@pytest.mark.parametrize("label", ['"Dog; Cat"', '"Dog\\nCat"'])
def test_a_label_holding_the_prompts_separator_or_a_line_break_is_an_error(tmp_path, label):
    # The prompt lists a dimension's labels as "Dog; Cat; NA": a label "Dog; Cat" would read as two.
    message = assert_error(tmp_path, f"dimensions:\n  pet:\n    labels: [{label}, Bird, NA]\n", "dimensions.pet.labels: label")
    assert "';' (the prompt's separator between labels)" in message and "on one line" in message


@pytest.mark.parametrize("labels, shown, kind", [
    ("[2020, 2021, NA]", "2020", "a number"),
    ("[yes, no, NA]", "True", "a boolean (YAML reads yes, no, on, off"),
    ("[1.5, NA]", "1.5", "a number"),
    ("[~, a, NA]", "None", "null"),
])
def test_a_label_yaml_reads_as_another_type_is_named_with_advice(tmp_path, labels, shown, kind):
    message = assert_error(tmp_path, f"dimensions:\n  year:\n    labels: {labels}\n",
                           f"dimensions.year.labels: label {shown} is {kind}", "write it in quotes")


def test_an_alias_yaml_reads_as_a_number_is_named(tmp_path):
    assert_error(tmp_path, "dimensions:\n  year:\n    labels: [old, NA]\n    aliases: {old: [1990]}\n",
                 "dimensions.year.aliases.old: alias 1990 is a number")
    assert_error(tmp_path, "na_label: 0\ndimensions:\n  year:\n    labels: [old, NA]\n", "na_label: label 0 is a number")


def test_invalid_yaml_is_an_error(tmp_path):
    assert_error(tmp_path, "dimensions:\n  gender: [Female, Male\n    labels: {\n", "invalid YAML")


def test_yaml_that_is_not_a_mapping_is_an_error(tmp_path):
    assert_error(tmp_path, "- just\n- a list\n", "dimensions")


def test_missing_file_is_an_error(tmp_path):
    path = tmp_path / "nowhere" / "tax.yaml"
    with pytest.raises(TaxonomyError) as info:
        Taxonomy.load(path)
    assert str(path) in str(info.value)


def test_taxonomy_error_is_a_value_error():
    assert issubclass(TaxonomyError, ValueError)


@pytest.mark.parametrize(
    "spec, where",
    [
        ({"labels": ["a", "NA"], "aliases": ["a"]}, "dimensions.d.aliases"),
        ({"labels": ["a", "NA"], "aliases": {"a": "alpha"}}, "dimensions.d.aliases"),
        ({"labels": ["a", "NA"], "na_aliases": "x"}, "dimensions.d.na_aliases"),
    ],
)
def test_malformed_aliases_are_taxonomy_errors(spec, where):
    with pytest.raises(TaxonomyError, match=where):
        Taxonomy.from_dict({"dimensions": {"d": spec}}, "custom.yaml")


def test_key_with_trailing_newline_is_rejected():
    with pytest.raises(TaxonomyError, match="key must match"):
        Taxonomy.from_dict({"dimensions": {"age\n": {"labels": ["a", "NA"]}}}, "custom.yaml")


# ---------------------------------------------------------------- names, paths, silent mistakes


def test_an_existing_file_is_read_whatever_its_name(tmp_path, monkeypatch):
    write(tmp_path, "dimensions:\n  pet:\n    labels: [Dog, NA]\n", name="mytax")
    monkeypatch.chdir(tmp_path)
    assert Taxonomy.load("mytax").keys == ("pet",)
    (tmp_path / "profilebench").mkdir()  # a folder of that name does not hide the bundled taxonomy
    assert Taxonomy.load("profilebench").keys == tuple(TABLE_6)
    with pytest.raises(TaxonomyError, match="othertax: no such bundled taxonomy and no such file"):
        Taxonomy.load("othertax")


def test_a_byte_order_mark_is_ignored(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfdimensions:\n  pet:\n    labels: [Dog, NA]\n")
    assert Taxonomy.load(path).keys == ("pet",)


@pytest.mark.parametrize(
    "text, line",
    [
        ("dimensions:\n  pet:\n    labels: [Dog, NA]\n  pet:\n    labels: [Cat, NA]\n", "line 4"),
        ("dimensions:\n  pet:\n    labels: [Dog, NA]\n    labels: [Cat, NA]\n", "line 4"),
        ("na_label: NA\nna_label: Unknown\ndimensions:\n  pet:\n    labels: [Dog, NA]\n", "line 2"),
        ("dimensions: {pet: {labels: [Dog, NA]}, pet: {labels: [Cat, NA]}}\n", "line 1"),
    ],
)
def test_a_repeated_key_is_an_error(tmp_path, text, line):
    message = assert_error(tmp_path, text, "duplicate key", "(first at line")
    assert line in message


@pytest.mark.parametrize(
    "spec, message",
    [
        # an alias that is another label
        ({"labels": ["Dog", "Cat", "NA"], "aliases": {"Dog": ["cat"]}}, "aliases.Dog: alias 'cat' already means 'Cat'"),
        # an alias that is one of the NA spellings, built in or declared
        ({"labels": ["Dog", "NA"], "aliases": {"Dog": ["N/A"]}}, "aliases.Dog: alias 'N/A' already means 'NA'"),
        ({"labels": ["Dog", "NA"], "na_aliases": ["nope"], "aliases": {"Dog": ["Nope"]}}, "aliases.Dog: alias 'Nope' already means 'NA'"),
        # an NA alias that is a label
        ({"labels": ["Dog", "None", "NA"], "na_aliases": ["none"]}, "na_aliases: alias 'none' already means 'None'"),
        # one alias for two labels
        ({"labels": ["Dog", "Cat", "NA"], "aliases": {"Dog": ["pet"], "Cat": ["Pet"]}}, "aliases.Cat: alias 'Pet' already means 'Dog'"),
    ],
)
def test_an_alias_that_collides_is_an_error(spec, message):
    with pytest.raises(TaxonomyError, match=re.escape(f"custom.yaml: dimensions.d.{message}")):
        Taxonomy.from_dict({"dimensions": {"d": spec}}, "custom.yaml")


def test_harmless_aliases_are_accepted():
    tax = Taxonomy.from_dict(
        {"dimensions": {"d": {"labels": ["Dog", "None", "NA"], "aliases": {"Dog": ["dog", "puppy"], "NA": ["unknown", "?"]}}}}
    )
    d = tax["d"]
    assert (d.canonical("Puppy"), d.canonical("?"), d.canonical("none"), d.canonical("N/A")) == ("Dog", "NA", "None", "NA")


@pytest.mark.parametrize(
    "data, where",
    [
        ({"dimensions": {"d": {"labels": ["a", "NA"], "alias": {"a": ["b"]}}}}, "dimensions.d: unknown key 'alias'"),
        ({"na_lable": "X", "dimensions": {"d": {"labels": ["a", "NA"]}}}, "custom.yaml: unknown key 'na_lable'"),
    ],
)
def test_a_misspelt_key_is_an_error(data, where):
    with pytest.raises(TaxonomyError, match=re.escape(where)):
        Taxonomy.from_dict(data, "custom.yaml")
