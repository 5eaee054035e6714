"use strict";(self.rspackChunknb2prod=self.rspackChunknb2prod||[]).push([[232],{475(r,o,e){var t=e(601),n=e.n(t),a=e(314),p=(e.n(a))()(n());p.push([r.id,`/*
 * nb2prod: stage markers on cells and the split/deploy dialogs.
 * Colours come from JupyterLab theme variables so light and dark themes work;
 * the per-stage colour is set inline as --nb2prod-stage-color.
 */

/* -- stage markers -------------------------------------------------------- */

.jp-Cell.nb2prod-staged {
  box-shadow: inset 3px 0 0 var(--nb2prod-stage-color, transparent);
}

.nb2prod-StageMarker {
  display: inline-block;
  align-self: flex-start;
  margin: 0 0 2px var(--jp-cell-prompt-width, 64px);
  padding: 0 6px;
  border-radius: 3px;
  font-family: var(--jp-ui-font-family);
  font-size: var(--jp-ui-font-size0, 10px);
  line-height: 16px;
  max-width: calc(100% - var(--jp-cell-prompt-width, 64px));
  overflow: hidden;
  white-space: nowrap;
  text-overflow: ellipsis;
  color: #fff;
  background: var(--nb2prod-stage-color, var(--jp-layout-color4));
  user-select: none;
}

.nb2prod-StageMarker[data-variant='continued'] {
  color: var(--jp-ui-font-color1);
  background: transparent;
  border: 1px solid var(--nb2prod-stage-color);
  line-height: 14px;
}

.nb2prod-StageMarker[data-variant='role'],
.nb2prod-StageMarker[data-variant='skip'] {
  color: var(--jp-ui-font-color2);
  background: var(--jp-layout-color2);
  border: 1px dashed var(--jp-border-color1);
  line-height: 14px;
}

.nb2prod-StageMarker[data-variant='error'] {
  color: #fff;
  background: var(--jp-error-color1);
}

.jp-Cell.nb2prod-flash {
  animation: nb2prod-flash 1.6s ease-out;
}

@keyframes nb2prod-flash {
  0%,
  40% {
    background: var(--jp-warn-color3, #ffe0b2);
  }

  100% {
    background: transparent;
  }
}

.nb2prod-busy .nb2prod-SplitButton,
.nb2prod-busy .nb2prod-DeployButton {
  opacity: 0.5;
  cursor: progress;
}

/* -- dialogs -------------------------------------------------------------- */

.nb2prod-Dialog .jp-Dialog-content {
  max-width: min(900px, 90vw);
}

.nb2prod-Report,
.nb2prod-ProblemsBody,
.nb2prod-DeployProgress {
  max-height: 60vh;
  overflow: auto;
  font-size: var(--jp-ui-font-size1);
}

.nb2prod-Report-output {
  font-family: var(--jp-code-font-family);
  background: var(--jp-layout-color2);
  padding: 1px 4px;
  border-radius: 2px;
}

.nb2prod-Stages {
  border-collapse: collapse;
  width: 100%;
  margin: 8px 0;
}

.nb2prod-Stages th,
.nb2prod-Stages td {
  text-align: left;
  vertical-align: top;
  padding: 4px 8px;
  border-bottom: 1px solid var(--jp-border-color2);
}

.nb2prod-Stages th {
  font-weight: 600;
  color: var(--jp-ui-font-color1);
}

.nb2prod-Stage-name {
  display: inline-block;
  padding: 0 6px;
  border-radius: 3px;
  color: #fff;
  background: var(--nb2prod-stage-color, var(--jp-brand-color1));
  font-weight: 600;
}

.nb2prod-Stage-dir,
.nb2prod-Stage-after,
.nb2prod-Stage-reqs {
  font-family: var(--jp-code-font-family);
  font-size: var(--jp-code-font-size);
  color: var(--jp-ui-font-color2);
}

.nb2prod-Report-dag {
  color: var(--jp-ui-font-color2);
}

.nb2prod-Report-heading {
  font-size: var(--jp-ui-font-size2);
  margin: 12px 0 4px;
}

.nb2prod-Problems {
  list-style: none;
  padding: 0;
  margin: 0;
}

.nb2prod-Problem {
  display: flex;
  align-items: baseline;
  gap: 8px;
  padding: 4px 0;
  border-bottom: 1px solid var(--jp-border-color2);
}

.nb2prod-Problem-text {
  flex: 1 1 auto;
  font-family: var(--jp-code-font-family);
  font-size: var(--jp-code-font-size);
  white-space: pre-wrap;
}

.nb2prod-GoToCell {
  flex: 0 0 auto;
}

.nb2prod-DeployForm {
  display: flex;
  flex-direction: column;
  gap: 8px;
  min-width: 360px;
}

.nb2prod-DeployForm-row {
  display: flex;
  flex-direction: column;
  gap: 2px;
}

.nb2prod-DeployForm-label {
  font-size: var(--jp-ui-font-size1);
  color: var(--jp-ui-font-color1);
}

.nb2prod-State {
  display: inline-block;
  padding: 0 6px;
  border-radius: 3px;
  background: var(--jp-layout-color3);
}

.nb2prod-State-running {
  background: var(--jp-brand-color3);
}

.nb2prod-State-done {
  background: var(--jp-success-color3, #c8e6c9);
}

.nb2prod-State-failed {
  color: #fff;
  background: var(--jp-error-color1);
}

.nb2prod-State-skipped {
  color: var(--jp-ui-font-color2);
}
`,""]),e.d(o,{},{A:p})},314(r){r.exports=function(r){var o=[];return o.toString=function(){return this.map(function(o){var e="",t=void 0!==o[5];return o[4]&&(e+="@supports (".concat(o[4],") {")),o[2]&&(e+="@media ".concat(o[2]," {")),t&&(e+="@layer".concat(o[5].length>0?" ".concat(o[5]):""," {")),e+=r(o),t&&(e+="}"),o[2]&&(e+="}"),o[4]&&(e+="}"),e}).join("")},o.i=function(r,e,t,n,a){"string"==typeof r&&(r=[[null,r,void 0]]);var p={};if(t)for(var i=0;i<this.length;i++){var l=this[i][0];null!=l&&(p[l]=!0)}for(var d=0;d<r.length;d++){var s=[].concat(r[d]);t&&p[s[0]]||(void 0!==a&&(void 0===s[5]||(s[1]="@layer".concat(s[5].length>0?" ".concat(s[5]):""," {").concat(s[1],"}")),s[5]=a),e&&(s[2]&&(s[1]="@media ".concat(s[2]," {").concat(s[1],"}")),s[2]=e),n&&(s[4]?(s[1]="@supports (".concat(s[4],") {").concat(s[1],"}"),s[4]=n):s[4]="".concat(n)),o.push(s))}},o}},601(r){r.exports=function(r){return r[1]}},72(r){var o=[];function e(r){for(var e=-1,t=0;t<o.length;t++)if(o[t].identifier===r){e=t;break}return e}function t(r,t){for(var n={},a=[],p=0;p<r.length;p++){var i=r[p],l=t.base?i[0]+t.base:i[0],d=n[l]||0,s="".concat(l," ").concat(d);n[l]=d+1;var c=e(s),u={css:i[1],media:i[2],sourceMap:i[3],supports:i[4],layer:i[5]};if(-1!==c)o[c].references++,o[c].updater(u);else{var f=function(r,o){var e=o.domAPI(o);return e.update(r),function(o){o?(o.css!==r.css||o.media!==r.media||o.sourceMap!==r.sourceMap||o.supports!==r.supports||o.layer!==r.layer)&&e.update(r=o):e.remove()}}(u,t);t.byIndex=p,o.splice(p,0,{identifier:s,updater:f,references:1})}a.push(s)}return a}r.exports=function(r,n){var a=t(r=r||[],n=n||{});return function(r){r=r||[];for(var p=0;p<a.length;p++){var i=e(a[p]);o[i].references--}for(var l=t(r,n),d=0;d<a.length;d++){var s=e(a[d]);0===o[s].references&&(o[s].updater(),o.splice(s,1))}a=l}}},659(r){var o={};r.exports=function(r,e){var t=function(r){if(void 0===o[r]){var e=document.querySelector(r);if(window.HTMLIFrameElement&&e instanceof window.HTMLIFrameElement)try{e=e.contentDocument.head}catch(r){e=null}o[r]=e}return o[r]}(r);if(!t)throw Error("Couldn't find a style target. This probably means that the value for the 'insert' parameter is invalid.");t.appendChild(e)}},540(r){r.exports=function(r){var o=document.createElement("style");return r.setAttributes(o,r.attributes),r.insert(o,r.options),o}},56(r,o,e){r.exports=function(r){var o=e.nc;o&&r.setAttribute("nonce",o)}},825(r){r.exports=function(r){if("u"<typeof document)return{update:function(){},remove:function(){}};var o=r.insertStyleElement(r);return{update:function(e){var t,n,a;t="",e.supports&&(t+="@supports (".concat(e.supports,") {")),e.media&&(t+="@media ".concat(e.media," {")),(n=void 0!==e.layer)&&(t+="@layer".concat(e.layer.length>0?" ".concat(e.layer):""," {")),t+=e.css,n&&(t+="}"),e.media&&(t+="}"),e.supports&&(t+="}"),(a=e.sourceMap)&&"u">typeof btoa&&(t+="\n/*# sourceMappingURL=data:application/json;base64,".concat(btoa(unescape(encodeURIComponent(JSON.stringify(a))))," */")),r.styleTagTransform(t,o,r.options)},remove:function(){var r;null===(r=o).parentNode||r.parentNode.removeChild(r)}}}},113(r){r.exports=function(r,o){if(o.styleSheet)o.styleSheet.cssText=r;else{for(;o.firstChild;)o.removeChild(o.firstChild);o.appendChild(document.createTextNode(r))}}},579(r,o,e){var t=e(72),n=e.n(t),a=e(825),p=e.n(a),i=e(659),l=e.n(i),d=e(56),s=e.n(d),c=e(540),u=e.n(c),f=e(113),b=e.n(f),v=e(475),g={};g.styleTagTransform=b(),g.setAttributes=s(),g.insert=l().bind(null,"head"),g.domAPI=p(),g.insertStyleElement=u(),n()(v.A,g),v.A&&v.A.locals&&v.A.locals}}]);