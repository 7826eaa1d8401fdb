import sys

from risbench.train.launch import main

sys.exit(main())
