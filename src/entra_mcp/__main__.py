from entra_mcp.cli import main

raise SystemExit(main())
