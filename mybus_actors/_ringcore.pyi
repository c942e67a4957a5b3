# The native ring core's types are ring.py's, method for method: see ringcore.py, which
# hands them out typed as ring.Producer, ring.Consumer and ring.Reader.
from mybus_actors.ring import Consumer as Consumer
from mybus_actors.ring import Producer as Producer
from mybus_actors.ring import Reader as Reader

VERSION: int
