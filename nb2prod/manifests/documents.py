"""The text forms: multi-document YAML for `render`, a Dockerfile for `render --dockerfile`."""

from __future__ import annotations

import shlex

from nb2prod.manifests.names import Obj
from nb2prod.manifests.pods import DEFAULT_IMAGE
from nb2prod.pipeline import Pipeline


def dockerfile(pipeline: Pipeline, store: str, boto3_requirement: str = "boto3") -> str:
    """A Dockerfile for `--image`: the base image plus every stage's pinned requirements
    (and boto3 for an s3:// store), so pods start without pip and without PyPI.

    The stage code is not in it (it comes from the ConfigMaps): the image only has to
    change when requirements.txt does.  Same user and paths as the pods expect.
    """
    wanted: set[str] = set()
    for stage in pipeline.stages.values():
        text = (stage.directory / "requirements.txt").read_text(encoding="utf-8") \
            if (stage.directory / "requirements.txt").is_file() else ""
        wanted.update(line.split("#", 1)[0].strip() for line in text.splitlines())
    if store.lower().startswith("s3://"):
        wanted.add(boto3_requirement)
    wanted.discard("")
    lines = [f"# nb2prod: an image for `nb2prod deploy {pipeline.root.name} --image IMAGE`",
             "# build: docker build -t REGISTRY/NAME:TAG - < Dockerfile   (no context needed)",
             f"FROM {DEFAULT_IMAGE}",
             "RUN python -m pip install --no-cache-dir --disable-pip-version-check \\"]
    lines += [f"      {shlex.quote(req)} \\" for req in sorted(wanted, key=str.lower)]
    lines[-1] = lines[-1].removesuffix(" \\")
    lines.append("USER 1000:1000")
    return "\n".join(lines) + "\n"


def to_yaml(objects: list[Obj], header: str = "") -> str:
    """Multi-document YAML, keys in construction order (apiVersion, kind, metadata first)."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    _Dumper.ignore_aliases = lambda self, data: True  # type: ignore[method-assign]
    docs = [yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                      allow_unicode=True, width=100) for obj in objects]
    return header + "---\n" + "---\n".join(docs)
