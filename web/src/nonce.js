// xterm.js writes its theme and cell sizes into <style> elements it makes at run time. The
// page's Content-Security-Policy allows no inline style but those carrying this response's
// nonce, which the service puts in a meta tag; every <style> made here gets it.
const meta = document.querySelector('meta[name="cubbi-style-nonce"]');
const nonce = meta ? meta.getAttribute("content") : "";
if (nonce) {
  const make = Document.prototype.createElement;
  Document.prototype.createElement = function (name, options) {
    const element = make.call(this, name, options);
    if (String(name).toLowerCase() === "style") element.nonce = nonce;
    return element;
  };
}
