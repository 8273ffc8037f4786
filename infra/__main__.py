"""`python -m infra <command>` runs the command line; under the Pulumi engine this is the program."""

import sys

import pulumi

if pulumi.runtime.get_root_resource() is None:
    from infra.cli import main

    sys.exit(main())
else:
    from infra.program import run

    run()
