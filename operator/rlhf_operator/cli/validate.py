"""`rlhfctl validate FILE...`: check job manifests, one line per problem."""

from __future__ import annotations

import argparse
import sys

from ..api.manifests import read_manifest_file, validate_text


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "validate",
        help="check RLHFJob manifests",
        description="Validate RLHFJob manifests (multi-document YAML; '-' reads standard input). "
        "Prints one line per problem and exits 1 if any document is invalid.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="manifest files")
    parser.add_argument("-q", "--quiet", action="store_true", help="print problems only")
    parser.set_defaults(func=run)


def validate_files(files: list[str], quiet: bool = False) -> tuple[int, list[str]]:
    """Validate files; returns the exit code and the lines to print (no exceptions)."""
    lines: list[str] = []
    ok = True
    for path in files:
        text, problem = read_manifest_file(path)
        if problem is not None or text is None:
            lines.append(str(problem))
            ok = False
            continue
        documents, problems = validate_text(text, path)
        if not documents and not problems:
            lines.append(f"{path}: contains no RLHFJob")
            ok = False
        # One line per problem, in document order; file-level problems first.
        entries: list[tuple[int, str]] = [(p.document or -1, str(p)) for p in problems]
        for doc in documents:
            entries += [(doc.index, str(p)) for p in doc.problems]
            if not doc.problems and not quiet and doc.job is not None:
                entries.append(
                    (doc.index, f"{path}[{doc.index}]: RLHFJob/{doc.job.metadata.name}: valid")
                )
        ok &= not problems and all(not d.problems for d in documents)
        lines += [line for _, line in sorted(entries, key=lambda e: e[0])]
    return (0 if ok else 1), lines


def run(args: argparse.Namespace) -> int:
    code, lines = validate_files(args.files, args.quiet)
    for line in lines:
        print(line, file=sys.stdout if line.endswith(": valid") else sys.stderr)
    return code
