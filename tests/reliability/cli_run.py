"""The `allones` command run in-process: (exit code, stdout, stderr), argparse's exits too."""

from allones import cli


def run_cli(capsys, *argv):
    try:
        rc = cli.main(list(argv))
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err
