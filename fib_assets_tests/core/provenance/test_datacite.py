import xml.etree.ElementTree as ET

import pytest

from fib_assets.core.provenance.datacite import (
    KERNEL,
    DataCiteError,
    parse_xml,
    record_from,
)


def _record(**kw):
    base = dict(title="FIB-SEM volume of HeLa", creators=["Doe, Jane", "(:unav)"],
                publisher="University Libraries, Virginia Tech", publication_year=2026)  # fmt: skip
    return record_from(**{**base, **kw})


def test_mandatory_properties_in_json_and_xml():
    rec = _record(subjects=["FIB-SEM"], rights="CC-BY-4.0", dates=[["Created", "2026-01-02"]])
    js = rec.to_json()
    for key in ("identifiers", "creators", "titles", "publisher", "publicationYear", "types"):
        assert js[key]
    assert js["identifiers"][0] == {"identifier": "(:tba)", "identifierType": "DOI"}
    assert js["creators"][0]["familyName"] == "Doe" and js["creators"][0]["givenName"] == "Jane"
    assert js["types"]["resourceTypeGeneral"] == "Dataset"
    xml = rec.to_xml()
    root = ET.fromstring(xml)
    assert root.tag == f"{{{KERNEL}}}resource"
    back = parse_xml(xml)
    assert back["identifier"] == "(:tba)" and back["titles"] == ["FIB-SEM volume of HeLa"]
    assert back["creators"] == ["Doe, Jane", "(:unav)"]
    assert back["publicationYear"] == "2026"
    assert back["resourceType"]["resourceTypeGeneral"] == "Dataset"


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"creators": []}, "Creator"),
        ({"title": " "}, "Title"),
        ({"publisher": ""}, "Publisher"),
        ({"publication_year": 99}, "PublicationYear"),
        ({"resource_type_general": "Volume"}, "resourceTypeGeneral"),
        ({"doi": "doi:10.1/x"}, "DOI"),
    ],
    ids=["creators", "title", "publisher", "year", "type", "doi"],
)
def test_invalid_records_name_the_property(kw, match):
    with pytest.raises(DataCiteError, match=match):
        _record(**kw)


def test_special_characters_are_escaped():
    rec = _record(title="Mito & ER <crops>", description="a < b")
    assert parse_xml(rec.to_xml())["titles"] == ["Mito & ER <crops>"]
