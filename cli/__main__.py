"""`python -m cli`, the same as the `voicechat` command."""

from cli.main import main

raise SystemExit(main())
