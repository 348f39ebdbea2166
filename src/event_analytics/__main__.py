from event_analytics.cli import main

raise SystemExit(main())
