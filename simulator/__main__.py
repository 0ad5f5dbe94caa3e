import logging
import sys
import time

from shared.logs import setup_logging

setup_logging("simulator")
logging.getLogger("simulator").warning("not implemented yet; idling (args: %s)", sys.argv[1:])
while True:
    time.sleep(3600)
