"""How much memory the primary allocates to decode one hostile frame body (issue 13, finding 5).
Results of this session are in the README, "Trust and limits".

Each shape is decoded in a fresh interpreter with the codec the primary uses; the figure is
the growth of peak RSS over the interpreter with the body already in memory, divided by the
body's size. Run: `.venv/bin/python benchmarks/decode_amplification.py [megabytes]`.
"""

from __future__ import annotations

import subprocess
import sys

SHAPES = {  # (JSON text, msgpack bytes) of one element of a long array
    'empty lists [[],[],...]': (b'[]', b'\x90'),
    'empty objects [{},{},...]': (b'{}', b'\x80'),
    'empty strings ["","",...]': (b'""', b'\xa0'),
    'floats [0.5,0.5,...]': (b'0.5', b'\xcb?\xe0\x00\x00\x00\x00\x00\x00'),
    'small ints [0,0,...]': (b'0', b'\x00'),
}

CHILD = r'''
import resource, sys
from isocluster.protocol import get_codec
codec = get_codec(sys.argv[1])
item = bytes.fromhex(sys.argv[2])
if codec.name == 'msgpack':
    count = int(sys.argv[3]) // len(item)
    body = b'\xdd' + count.to_bytes(4, 'big') + item * count
else:
    count = int(sys.argv[3]) // (len(item) + 1)
    body = b'[' + (item + b',') * (count - 1) + item + b']'
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
value = codec.decode(body)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(body), (after - before) * 1024)
'''


def main() -> None:
    size = int(float(sys.argv[1] if len(sys.argv) > 1 else 8) * 1024 * 1024)
    codecs = ['json']
    for optional in ('orjson', 'msgpack'):
        try:
            __import__(optional)
        except ImportError:
            continue
        codecs.append(optional)
    print(f'| codec | body | body size | peak RSS growth | bytes per body byte |')
    print('| --- | --- | ---: | ---: | ---: |')
    for codec in codecs:
        for name, items in SHAPES.items():
            item = items[1] if codec == 'msgpack' else items[0]
            out = subprocess.run([sys.executable, '-c', CHILD, codec, item.hex(), str(size)],
                                 check=True, capture_output=True, text=True).stdout.split()
            body, grown = int(out[0]), int(out[1])
            print(f'| {codec} | {name} | {body / 1e6:.1f} MB | {grown / 1e6:.0f} MB | {grown / body:.1f} |')


if __name__ == '__main__':
    main()
