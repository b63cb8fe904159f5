"""DataCite metadata (schema 4.5) of a deposit, as JSON (DataCite REST attributes) and XML.

The mandatory properties are Identifier, Creator, Title, Publisher, PublicationYear and
ResourceType (resourceTypeGeneral). A draft has no DOI yet — the repository mints one when a
curator publishes — so the identifier is DataCite's standard value ``(:tba)`` ("to be
assigned") until one is given.
"""

from __future__ import annotations

import datetime as _dt
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

KERNEL = "http://datacite.org/schema/kernel-4"
SCHEMA_LOCATION = "http://schema.datacite.org/meta/kernel-4.5/metadata.xsd"
TO_BE_ASSIGNED = "(:tba)"
MANDATORY = ("identifier", "creators", "titles", "publisher", "publicationYear", "resourceType")
RESOURCE_TYPES_GENERAL = frozenset(
    {
        "Audiovisual", "Book", "BookChapter", "Collection", "ComputationalNotebook",
        "ConferencePaper", "ConferenceProceeding", "DataPaper", "Dataset", "Dissertation",
        "Event", "Image", "Instrument", "InteractiveResource", "Journal", "JournalArticle",
        "Model", "OutputManagementPlan", "PeerReview", "PhysicalObject", "Preprint", "Report",
        "Service", "Software", "Sound", "Standard", "StudyRegistration", "Text", "Workflow",
        "Other",
    }
)  # fmt: skip


class DataCiteError(ValueError):
    """Missing or invalid DataCite metadata; names the property."""


@dataclass(frozen=True)
class DataCiteRecord:
    """The DataCite description of one deposit. ``creators`` are "Family, Given" names."""

    title: str
    creators: tuple[str, ...]
    publisher: str
    publication_year: int
    resource_type: str = "FIB-SEM image volumes"
    resource_type_general: str = "Dataset"
    doi: str | None = None
    description: str = ""
    subjects: tuple[str, ...] = ()
    rights: str | None = None  # license name, e.g. "CC-BY-4.0"
    rights_uri: str | None = None
    version: str | None = None
    sizes: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    dates: tuple[tuple[str, str], ...] = ()  # (dateType, ISO date)
    related: tuple[tuple[str, str, str], ...] = ()  # (relationType, identifierType, identifier)
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> DataCiteRecord:
        """Raise DataCiteError naming the first missing or invalid mandatory property."""
        if not self.title.strip():
            raise DataCiteError("DataCite: Title is mandatory and empty")
        if not self.creators or not all(c.strip() for c in self.creators):
            raise DataCiteError("DataCite: at least one Creator (name) is mandatory")
        if not self.publisher.strip():
            raise DataCiteError("DataCite: Publisher is mandatory and empty")
        if not 1000 <= int(self.publication_year) <= 9999:
            raise DataCiteError(
                f"DataCite: PublicationYear must be a 4-digit year, got {self.publication_year}"
            )
        if self.resource_type_general not in RESOURCE_TYPES_GENERAL:
            raise DataCiteError(
                f"DataCite: resourceTypeGeneral {self.resource_type_general!r} is not one of the "
                "controlled values (e.g. 'Dataset')"
            )
        if self.doi is not None and not self.doi.startswith("10."):
            raise DataCiteError(f"DataCite: DOI {self.doi!r} must start with '10.'")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> dict[str, Any]:
        """DataCite REST API ``attributes`` (schema 4.5 property names)."""
        self.validate()
        d: dict[str, Any] = {
            "doi": self.doi,
            "identifiers": [
                {"identifier": self.doi or TO_BE_ASSIGNED, "identifierType": "DOI"},
            ],
            "creators": [_creator_json(c) for c in self.creators],
            "titles": [{"title": self.title}],
            "publisher": {"name": self.publisher},
            "publicationYear": int(self.publication_year),
            "types": {
                "resourceTypeGeneral": self.resource_type_general,
                "resourceType": self.resource_type,
            },
            "schemaVersion": KERNEL,
        }
        if self.description:
            d["descriptions"] = [{"description": self.description, "descriptionType": "Abstract"}]
        if self.subjects:
            d["subjects"] = [{"subject": s} for s in self.subjects]
        if self.rights:
            r: dict[str, str] = {"rights": self.rights}
            if self.rights_uri:
                r["rightsUri"] = self.rights_uri
            d["rightsList"] = [r]
        if self.version:
            d["version"] = self.version
        if self.sizes:
            d["sizes"] = list(self.sizes)
        if self.formats:
            d["formats"] = list(self.formats)
        if self.dates:
            d["dates"] = [{"date": v, "dateType": t} for t, v in self.dates]
        if self.related:
            d["relatedIdentifiers"] = [
                {"relationType": rel, "relatedIdentifierType": typ, "relatedIdentifier": ident}
                for rel, typ, ident in self.related
            ]
        d.update(self.extra)
        return d

    def to_xml(self) -> str:
        """DataCite kernel-4 XML (UTF-8 text with declaration)."""
        self.validate()
        ET.register_namespace("", KERNEL)
        ET.register_namespace("xsi", "http://www.w3.org/2001/XMLSchema-instance")
        q = _q
        root = ET.Element(
            q("resource"),
            {
                "{http://www.w3.org/2001/XMLSchema-instance}schemaLocation": f"{KERNEL} "
                f"{SCHEMA_LOCATION}"
            },
        )
        ident = ET.SubElement(root, q("identifier"), identifierType="DOI")
        ident.text = self.doi or TO_BE_ASSIGNED
        creators = ET.SubElement(root, q("creators"))
        for c in self.creators:
            cj = _creator_json(c)
            ce = ET.SubElement(creators, q("creator"))
            ET.SubElement(ce, q("creatorName"), nameType=cj["nameType"]).text = cj["name"]
            if "givenName" in cj:
                ET.SubElement(ce, q("givenName")).text = cj["givenName"]
                ET.SubElement(ce, q("familyName")).text = cj["familyName"]
        titles = ET.SubElement(root, q("titles"))
        ET.SubElement(titles, q("title")).text = self.title
        ET.SubElement(root, q("publisher")).text = self.publisher
        ET.SubElement(root, q("publicationYear")).text = str(int(self.publication_year))
        ET.SubElement(
            root, q("resourceType"), resourceTypeGeneral=self.resource_type_general
        ).text = self.resource_type
        if self.subjects:
            subjects = ET.SubElement(root, q("subjects"))
            for s in self.subjects:
                ET.SubElement(subjects, q("subject")).text = s
        if self.dates:
            dates = ET.SubElement(root, q("dates"))
            for t, v in self.dates:
                ET.SubElement(dates, q("date"), dateType=t).text = v
        if self.related:
            rel = ET.SubElement(root, q("relatedIdentifiers"))
            for rtype, itype, ident_value in self.related:
                ET.SubElement(
                    rel, q("relatedIdentifier"), relatedIdentifierType=itype, relationType=rtype
                ).text = ident_value
        if self.sizes:
            sizes = ET.SubElement(root, q("sizes"))
            for s in self.sizes:
                ET.SubElement(sizes, q("size")).text = s
        if self.formats:
            formats = ET.SubElement(root, q("formats"))
            for f in self.formats:
                ET.SubElement(formats, q("format")).text = f
        if self.version:
            ET.SubElement(root, q("version")).text = self.version
        if self.rights:
            rights = ET.SubElement(root, q("rightsList"))
            attrs = {"rightsURI": self.rights_uri} if self.rights_uri else {}
            ET.SubElement(rights, q("rights"), attrs).text = self.rights
        if self.description:
            descs = ET.SubElement(root, q("descriptions"))
            ET.SubElement(
                descs, q("description"), descriptionType="Abstract"
            ).text = self.description
        ET.indent(root)
        return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _q(tag: str) -> str:
    return f"{{{KERNEL}}}{tag}"


def _creator_json(name: str) -> dict[str, str]:
    name = name.strip()
    if name.startswith("(:"):  # DataCite standard values such as (:unav) are not persons
        return {"name": name, "nameType": "Organizational"}
    if "," in name:
        family, given = (s.strip() for s in name.split(",", 1))
        return {"name": name, "nameType": "Personal", "givenName": given, "familyName": family}
    return {"name": name, "nameType": "Organizational"}


def parse_xml(text: str) -> dict[str, Any]:
    """Read back the mandatory properties from DataCite XML (to verify a written file)."""
    root = ET.fromstring(text)

    def one(path: str) -> ET.Element:
        el = root.find(path, {"d": KERNEL})
        if el is None:
            raise DataCiteError(f"DataCite XML: mandatory element {path} missing")
        return el

    rt = one("d:resourceType")
    return {
        "identifier": one("d:identifier").text,
        "creators": [
            e.text for e in root.findall("d:creators/d:creator/d:creatorName", {"d": KERNEL})
        ],
        "titles": [e.text for e in root.findall("d:titles/d:title", {"d": KERNEL})],
        "publisher": one("d:publisher").text,
        "publicationYear": one("d:publicationYear").text,
        "resourceType": {"resourceTypeGeneral": rt.get("resourceTypeGeneral"), "text": rt.text},
    }


def current_year() -> int:
    return _dt.datetime.now(tz=_dt.UTC).year


def record_from(
    *,
    title: str,
    creators: Sequence[str],
    publisher: str,
    publication_year: int | None = None,
    **kwargs: Any,
) -> DataCiteRecord:
    """A validated record; tuples for sequence fields, the current year by default."""
    for k in ("subjects", "sizes", "formats", "dates", "related"):
        if k in kwargs and kwargs[k] is not None:
            kwargs[k] = tuple(tuple(x) if isinstance(x, list) else x for x in kwargs[k])
    return DataCiteRecord(
        title=title,
        creators=tuple(creators),
        publisher=publisher,
        publication_year=publication_year or current_year(),
        **kwargs,
    ).validate()
