#!/usr/bin/env python3
"""Regenerates body_5000.lp (5,000 line-protocol lines, 704,450 B) and body_1.lp (first line)."""
import os
d = os.path.dirname(os.path.abspath(__file__))
lines = [f"cpu,host=host_{i%1000},region=us-west,dc=dc1 usage_user={12.5+i%7},usage_system={3.25+i%3},"
         f"usage_idle=80.1,usage_iowait=0.5,usage_irq=0.0 {1700000000000000000+i*1000000000}\n" for i in range(5000)]
open(os.path.join(d, "body_5000.lp"), "w").write("".join(lines))
open(os.path.join(d, "body_1.lp"), "w").write(lines[0])
