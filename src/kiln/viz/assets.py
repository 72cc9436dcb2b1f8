"""The viz page's inline assets: its style sheet, scripts and content security policy."""

# Nothing may be fetched: inline styles and scripts only.
CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

CSS = """
:root{font:13px/1.4 system-ui,sans-serif;color:#1d2330;background:#f4f5f8}
body{margin:0;padding:14px 22px}
header h1{margin:0;font-size:20px}header p{margin:2px 0 12px;color:#5b6472}
section.model{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:12px 16px;
margin-bottom:20px}
h2{font-size:16px;margin:0 0 8px}h3{font-size:14px;margin:0}
.hint{margin:0 0 6px;color:#6b7380;font-size:12px}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:3px 14px;margin:0 0 14px}
dt{color:#6b7380}dd{margin:0}
code,svg text,.chip,#tip{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,monospace}
code{font-size:12px}
.chip{display:inline-block;background:#eef1f5;border-radius:9px;padding:0 7px;margin:1px 2px;
font-size:11px}
.panes{display:flex;gap:24px;align-items:flex-start}
.pane{flex:0 1 auto;min-width:0}
.pane.mem{flex:1 0 460px;max-width:760px;position:sticky;top:8px}
.panes.wide{flex-direction:column}.wide .pane{flex:none;max-width:100%}
.wide .pane.mem{order:-1;position:static;width:100%}
@media (max-width:1000px){.panes{flex-wrap:wrap}.pane.mem{position:static}}
.scroll{overflow:auto;max-width:100%}
svg text{font-size:11px;fill:#1d2330}
.node{cursor:default}
.kernel .box{fill:hsl(var(--h),60%,96%);stroke:hsl(var(--h),30%,62%)}
.kernel .stripe{fill:hsl(var(--h),55%,48%)}
.input .box{fill:#e4f4e8;stroke:#3c9a5f}.output .box{fill:#fdeddf;stroke:#d0792f}
text.title{font-weight:700;font-size:12px}
text.kind{fill:#6b7380;font-size:9.5px;letter-spacing:.06em;text-transform:uppercase}
text.shape{fill:#3b4350}text.weight{fill:#8a5d00;font-size:10.5px}
.edge .line{fill:none;stroke:#97a0ad;stroke-width:1.3}
.edge .hit{fill:none;stroke:transparent;stroke-width:9}
marker path{fill:#97a0ad}
svg.memory{width:100%;max-width:640px;height:auto;display:block}
.plot{fill:#fbfcfd;stroke:#dde1e7}.grid{stroke:#e9ecf1}
text.axis{fill:#6b7380;font-size:10px}
.buf{fill:hsl(var(--h),62%,74%);stroke:hsl(var(--h),45%,38%);stroke-width:.6}
.buf.in{fill:#9fd8b0;stroke:#3c9a5f}.buf.out{fill:#f6c39b;stroke:#d0792f}
.focus .node,.focus .edge,.focus .buf{opacity:.28}
.focus .hl{opacity:1}
.node.hl .box,.buf.hl{stroke:#111;stroke-width:2}
.edge.hl .line{stroke:#1d2330;stroke-width:2.2}
#tip{position:fixed;z-index:9;pointer-events:none;background:#1d2330;color:#fff;
padding:6px 8px;border-radius:5px;font-size:11px;line-height:1.35;white-space:pre;
max-width:640px;overflow:hidden;box-shadow:0 2px 8px #0004}
"""

# First thing in <body>: record any later script error on the body, for people and tests.
ONERROR = """
function kilnError(msg){var b=document.body;
b.dataset.jsErrors=(b.dataset.jsErrors?b.dataset.jsErrors+"\\n":"")+msg;}
window.onerror=function(msg,src,line,col){kilnError(msg+" (line "+line+":"+col+")");};
"""

# Tooltips from data-tip; hovering a node, edge or buffer highlights what data-links names.
JS = """
(function(){
var tip=document.getElementById("tip"),lit=[];
function clear(){lit.forEach(function(el){el.classList.remove("hl");});lit=[];
document.querySelectorAll("section.focus").forEach(function(s){s.classList.remove("focus");});}
function light(el){clear();var sec=el.closest("section.model");if(!sec)return;
sec.classList.add("focus");el.classList.add("hl");lit.push(el);
el.getAttribute("data-links").split(" ").forEach(function(id){
var other=id&&sec.querySelector('[data-id="'+id+'"]');
if(other){other.classList.add("hl");lit.push(other);}});}
document.addEventListener("mouseover",function(ev){
var el=ev.target.closest?ev.target.closest("[data-tip]"):null;
if(!el){tip.hidden=true;clear();return;}
tip.textContent=el.getAttribute("data-tip");tip.hidden=false;
if(el.hasAttribute("data-links"))light(el);});
document.addEventListener("mousemove",function(ev){if(tip.hidden)return;
var r=tip.getBoundingClientRect(),x=ev.clientX+14,y=ev.clientY+14;
if(x+r.width>innerWidth)x=Math.max(0,ev.clientX-r.width-14);
if(y+r.height>innerHeight)y=Math.max(0,ev.clientY-r.height-14);
tip.style.left=x+"px";tip.style.top=y+"px";});
document.querySelectorAll("section.model").forEach(function(sec){
var k=sec.querySelectorAll("[data-kernel]").length,b=sec.querySelectorAll("[data-buffer]").length;
sec.dataset.renderedKernels=k;sec.dataset.renderedBuffers=b;
if(k!==+sec.dataset.kernels||b!==+sec.dataset.buffers)kilnError("model "+sec.dataset.model+
": rendered "+k+" kernels and "+b+" buffers, expected "+sec.dataset.kernels+" and "+
sec.dataset.buffers);});
document.body.dataset.ready="1";
})();
"""
