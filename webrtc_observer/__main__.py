import sys

from webrtc_observer.cli import main

sys.exit(main())
