"use strict";(self.rspackChunknb2prod=self.rspackChunknb2prod||[]).push([[232],{3843(o,r,e){var n=e(3401),a=e.n(n),t=e(4578),p=(e.n(t))()(a());p.push([o.id,`/*
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
.nb2prod-StageMarker[data-variant='inferred'],
.nb2prod-StageMarker[data-variant='skip'],
.nb2prod-StageMarker[data-variant='none'] {
  color: var(--jp-ui-font-color1);
  background: var(--jp-layout-color2);
  border: 1px dashed var(--jp-border-color1);
  line-height: 14px;
}

/* an untagged cell: its role comes from the server's analysis */
.nb2prod-StageMarker[data-variant='inferred'] {
  border-style: dotted;
}

/* in no stage: quiet, it is the cell's role control too */
.nb2prod-StageMarker[data-variant='none'] {
  background: transparent;
  color: var(--jp-ui-font-color1);
}

/* every marker is the cell's role control: a click opens the role menu */
.nb2prod-StageMarker {
  cursor: pointer;
}

.nb2prod-StageMarker::after {
  content: ' \\25BE';
  opacity: 0.8;
}

.nb2prod-StageMarker:hover,
.nb2prod-StageMarker:focus-visible {
  outline: 1px solid var(--jp-brand-color1);
  outline-offset: 1px;
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

/* -- toolbar buttons: icon + short label; a spinner while the server works -- */

.nb2prod-ToolbarButton-button {
  display: flex;
  align-items: center;
  gap: 3px;
  padding: 0 5px;
  white-space: nowrap;
}

.nb2prod-ToolbarButton-label {
  font-size: var(--jp-ui-font-size1);
  color: var(--jp-ui-font-color1);
}

.nb2prod-ToolbarButton-button:disabled {
  opacity: 0.5;
}

.nb2prod-ToolbarButton[data-busy='true'] .nb2prod-ToolbarButton-button {
  cursor: progress;
  background: var(--jp-layout-color2);
}

.nb2prod-Spinner,
.nb2prod-PipelinePanel[data-loading='true'] .nb2prod-PanelCheck::before {
  display: inline-block;
  width: 12px;
  height: 12px;
  box-sizing: border-box;
  border: 2px solid var(--jp-border-color2);
  border-top-color: var(--jp-brand-color1);
  border-radius: 50%;
  animation: nb2prod-spin 0.8s linear infinite;
  vertical-align: middle;
}

.nb2prod-ToolbarButton-icon[hidden],
.nb2prod-Spinner[hidden] {
  display: none;
}

@keyframes nb2prod-spin {
  to {
    transform: rotate(360deg);
  }
}

/* the panel's Check button while the server checks */
.nb2prod-PipelinePanel[data-loading='true'] .nb2prod-PanelCheck::before {
  content: '';
  margin-right: 4px;
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

a.nb2prod-Report-output {
  color: var(--jp-content-link-color);
  text-decoration: underline;
  cursor: pointer;
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

/* stopped on purpose (the Stop button): not an error, not red */
.nb2prod-State-stopped {
  color: #000;
  background: #ffe0b2;
}

/* -- problems of the last check, on their cells ----------------------------- */

.nb2prod-CellProblem {
  margin: 0 0 2px var(--jp-cell-prompt-width, 64px);
  padding: 2px 6px;
  font-family: var(--jp-ui-font-family);
  font-size: var(--jp-ui-font-size1);
  white-space: pre-wrap;
  color: var(--jp-ui-font-color1);
  background: var(--jp-layout-color1);
  border-left: 4px solid var(--jp-warn-color1);
}

.nb2prod-CellProblem[data-severity='error'] {
  border-left-color: var(--jp-error-color1);
}

/* -- the Pipeline panel ------------------------------------------------------ */

.nb2prod-PipelinePanel {
  background: var(--jp-layout-color1);
  color: var(--jp-ui-font-color1);
  font-size: var(--jp-ui-font-size1);
  min-width: 300px;
  overflow: auto;
}

.nb2prod-PanelBody {
  padding: 8px;
}

.nb2prod-PanelHeader {
  display: flex;
  align-items: center;
  gap: 6px;
  flex-wrap: wrap;
}

.nb2prod-RunPortLabel {
  font-size: var(--jp-ui-font-size1);
}

.nb2prod-RunPort {
  width: 6em;
}

.nb2prod-PanelHeader-name {
  flex: 1 1 auto;
  font-weight: 600;
  overflow: hidden;
  text-overflow: ellipsis;
}

.nb2prod-PanelSection-title {
  font-size: var(--jp-ui-font-size2);
  margin: 12px 0 4px;
}

.nb2prod-Panel-error {
  color: var(--jp-error-color1);
  white-space: pre-wrap;
  font-family: var(--jp-code-font-family);
}

.nb2prod-Dag {
  max-width: 100%;
  height: auto;
  font-family: var(--jp-ui-font-family);
}

.nb2prod-DagNode {
  cursor: pointer;
}

.nb2prod-DagNode text {
  font-size: 11px;
  fill: #212121; /* on the light state fills, in both themes */
}

.nb2prod-DagNode-name {
  font-weight: 600;
}

.nb2prod-DagEdge path {
  fill: none;
  stroke: var(--jp-ui-font-color2);
  stroke-width: 1.5;
}

.nb2prod-Dag-arrow {
  fill: var(--jp-ui-font-color2);
}

.nb2prod-DagEdge text {
  font-size: 10px;
  fill: var(--jp-ui-font-color1);
  paint-order: stroke;
  stroke: var(--jp-layout-color1);
  stroke-width: 3px;
}

.nb2prod-RunStages {
  border-collapse: collapse;
  width: 100%;
}

.nb2prod-RunStages th,
.nb2prod-RunStages td {
  text-align: left;
  padding: 2px 4px;
  border-bottom: 1px solid var(--jp-border-color2);
  vertical-align: top;
}

/* words stay whole in a narrow sidebar (metrics may break after '=', panel.ts) */
.nb2prod-RunStage-name {
  overflow-wrap: anywhere;
}

.nb2prod-RunStage-links .nb2prod-RunLink {
  display: inline-block;
  white-space: nowrap;
  font-size: var(--jp-ui-font-size0);
}

.nb2prod-RunStage[data-state='failed'] td:nth-child(2) {
  color: var(--jp-error-color1);
  font-weight: 600;
}

.nb2prod-RunStage-message {
  font-family: var(--jp-code-font-family);
  white-space: pre-wrap;
}

.nb2prod-RunLink {
  margin-right: 6px;
  color: var(--jp-content-link-color);
}

.nb2prod-RunStatus[data-status='failed'] {
  color: var(--jp-error-color1);
}

.nb2prod-PanelStage {
  padding: 4px 0;
  border-bottom: 1px solid var(--jp-border-color2);
}

.nb2prod-PanelStage-facts {
  display: grid;
  grid-template-columns: max-content 1fr;
  gap: 0 8px;
  margin: 2px 0;
}

.nb2prod-PanelStage-facts dt {
  color: var(--jp-ui-font-color1);
  font-weight: 600;
}

.nb2prod-PanelStage-facts dd {
  margin: 0;
  font-family: var(--jp-code-font-family);
  word-break: break-word;
}

.nb2prod-CellLink,
.nb2prod-RunItem-button {
  background: none;
  border: none;
  padding: 0 3px;
  color: var(--jp-content-link-color);
  cursor: pointer;
  font: inherit;
  text-align: left;
}

.nb2prod-RunList {
  list-style: none;
  padding: 0;
  margin: 0;
}

.nb2prod-RunItem.nb2prod-mod-shown {
  font-weight: 600;
}

.nb2prod-Legend {
  list-style: none;
  padding: 0;
  margin: 0;
  display: flex;
  flex-wrap: wrap;
  gap: 4px 12px;
}

.nb2prod-Legend-item {
  display: flex;
  align-items: center;
  gap: 4px;
}

.nb2prod-Legend-swatch,
.nb2prod-Legend-shape {
  display: inline-block;
  width: 14px;
  height: 10px;
  border: 1px solid var(--jp-border-color1);
}

.nb2prod-Legend-batch {
  border-radius: 3px;
}

.nb2prod-Legend-service {
  border-radius: 50%;
}

.nb2prod-Legend-dashed {
  display: inline-block;
  width: 18px;
  border-top: 2px dashed var(--jp-ui-font-color2);
}

.nb2prod-Problem[data-severity='warning'] .nb2prod-Problem-text::before {
  content: '⚠ ';
}

/* -- the cell role form ------------------------------------------------------- */

.nb2prod-RoleForm {
  display: flex;
  flex-direction: column;
  gap: 6px;
  min-width: 420px;
}

.nb2prod-RoleForm-check {
  display: flex;
  align-items: center;
  gap: 4px;
}

.nb2prod-RoleForm-errors {
  color: var(--jp-error-color1);
  margin: 0;
  padding-left: 16px;
}

.nb2prod-PipelinePanel {
  overflow-x: hidden;
}

.nb2prod-PipelinePanel .nb2prod-Problem {
  flex-wrap: wrap;
}

.nb2prod-PipelinePanel .nb2prod-Problem-text {
  overflow-wrap: anywhere;
  min-width: 0;
}

.nb2prod-PanelStage-requirements {
  white-space: pre-line;
}

.nb2prod-DeployForm-note {
  color: var(--jp-warn-color0, var(--jp-ui-font-color1));
  margin: 0;
}

/* -- deploy progress (dialog and panel section) ------------------------------ */

.nb2prod-DeployError,
.nb2prod-DeployStage-message-failed {
  color: var(--jp-error-color1);
  white-space: pre-wrap;
}

.nb2prod-DeployError {
  font-weight: 600;
}

.nb2prod-DeployStoppedBy {
  font-weight: 600;
}

.nb2prod-DeployFollowing {
  white-space: pre-wrap;
  font-style: italic;
}

.nb2prod-State-serving {
  background: var(--jp-success-color3, #c8e6c9);
}

.nb2prod-State-cached {
  background: var(--jp-info-color3, #bbdefb);
}

.nb2prod-DeployService {
  margin: 6px 0;
  overflow-wrap: anywhere;
}

.nb2prod-DeploySection .nb2prod-DeployStages {
  font-size: var(--jp-ui-font-size0);
}

.nb2prod-DeployStage-messageRow td {
  padding: 0 0 4px 8px;
  font-size: var(--jp-ui-font-size0);
  overflow-wrap: anywhere;
  color: var(--jp-ui-font-color2);
}

.nb2prod-DeployStage-messageRow td.nb2prod-DeployStage-message-failed {
  color: var(--jp-error-color1);
}

/* -- Run and serve ------------------------------------------------------------ */

.nb2prod-Serving-curl {
  white-space: pre-wrap;
  overflow-wrap: anywhere;
  font-family: var(--jp-code-font-family);
  font-size: var(--jp-ui-font-size0);
  background: var(--jp-layout-color2);
  padding: 4px 6px;
  margin: 2px 0 4px;
  user-select: all;
}

.nb2prod-Serving-url {
  font-family: var(--jp-code-font-family);
  overflow-wrap: anywhere;
}

.nb2prod-Serving-note {
  color: var(--jp-ui-font-color2);
  font-size: var(--jp-ui-font-size0);
}
`,""]),e.d(r,{},{A:p})},4578(o){o.exports=function(o){var r=[];return r.toString=function(){return this.map(function(r){var e="",n=void 0!==r[5];return r[4]&&(e+="@supports (".concat(r[4],") {")),r[2]&&(e+="@media ".concat(r[2]," {")),n&&(e+="@layer".concat(r[5].length>0?" ".concat(r[5]):""," {")),e+=o(r),n&&(e+="}"),r[2]&&(e+="}"),r[4]&&(e+="}"),e}).join("")},r.i=function(o,e,n,a,t){"string"==typeof o&&(o=[[null,o,void 0]]);var p={};if(n)for(var i=0;i<this.length;i++){var l=this[i][0];null!=l&&(p[l]=!0)}for(var d=0;d<o.length;d++){var s=[].concat(o[d]);n&&p[s[0]]||(void 0!==t&&(void 0===s[5]||(s[1]="@layer".concat(s[5].length>0?" ".concat(s[5]):""," {").concat(s[1],"}")),s[5]=t),e&&(s[2]&&(s[1]="@media ".concat(s[2]," {").concat(s[1],"}")),s[2]=e),a&&(s[4]?(s[1]="@supports (".concat(s[4],") {").concat(s[1],"}"),s[4]=a):s[4]="".concat(a)),r.push(s))}},r}},3401(o){o.exports=function(o){return o[1]}},4792(o){var r=[];function e(o){for(var e=-1,n=0;n<r.length;n++)if(r[n].identifier===o){e=n;break}return e}function n(o,n){for(var a={},t=[],p=0;p<o.length;p++){var i=o[p],l=n.base?i[0]+n.base:i[0],d=a[l]||0,s="".concat(l," ").concat(d);a[l]=d+1;var c=e(s),b={css:i[1],media:i[2],sourceMap:i[3],supports:i[4],layer:i[5]};if(-1!==c)r[c].references++,r[c].updater(b);else{var f=function(o,r){var e=r.domAPI(r);return e.update(o),function(r){r?(r.css!==o.css||r.media!==o.media||r.sourceMap!==o.sourceMap||r.supports!==o.supports||r.layer!==o.layer)&&e.update(o=r):e.remove()}}(b,n);n.byIndex=p,r.splice(p,0,{identifier:s,updater:f,references:1})}t.push(s)}return t}o.exports=function(o,a){var t=n(o=o||[],a=a||{});return function(o){o=o||[];for(var p=0;p<t.length;p++){var i=e(t[p]);r[i].references--}for(var l=n(o,a),d=0;d<t.length;d++){var s=e(t[d]);0===r[s].references&&(r[s].updater(),r.splice(s,1))}t=l}}},3987(o){var r={};o.exports=function(o,e){var n=function(o){if(void 0===r[o]){var e=document.querySelector(o);if(window.HTMLIFrameElement&&e instanceof window.HTMLIFrameElement)try{e=e.contentDocument.head}catch(o){e=null}r[o]=e}return r[o]}(o);if(!n)throw Error("Couldn't find a style target. This probably means that the value for the 'insert' parameter is invalid.");n.appendChild(e)}},9604(o){o.exports=function(o){var r=document.createElement("style");return o.setAttributes(r,o.attributes),o.insert(r,o.options),r}},7944(o,r,e){o.exports=function(o){var r=e.nc;r&&o.setAttribute("nonce",r)}},6505(o){o.exports=function(o){if("u"<typeof document)return{update:function(){},remove:function(){}};var r=o.insertStyleElement(o);return{update:function(e){var n,a,t;n="",e.supports&&(n+="@supports (".concat(e.supports,") {")),e.media&&(n+="@media ".concat(e.media," {")),(a=void 0!==e.layer)&&(n+="@layer".concat(e.layer.length>0?" ".concat(e.layer):""," {")),n+=e.css,a&&(n+="}"),e.media&&(n+="}"),e.supports&&(n+="}"),(t=e.sourceMap)&&"u">typeof btoa&&(n+="\n/*# sourceMappingURL=data:application/json;base64,".concat(btoa(unescape(encodeURIComponent(JSON.stringify(t))))," */")),o.styleTagTransform(n,r,o.options)},remove:function(){var o;null===(o=r).parentNode||o.parentNode.removeChild(o)}}}},3009(o){o.exports=function(o,r){if(r.styleSheet)r.styleSheet.cssText=o;else{for(;r.firstChild;)r.removeChild(r.firstChild);r.appendChild(document.createTextNode(o))}}},8579(o,r,e){var n=e(4792),a=e.n(n),t=e(6505),p=e.n(t),i=e(3987),l=e.n(i),d=e(7944),s=e.n(d),c=e(9604),b=e.n(c),f=e(3009),u=e.n(f),g=e(3843),v={};v.styleTagTransform=u(),v.setAttributes=s(),v.insert=l().bind(null,"head"),v.domAPI=p(),v.insertStyleElement=b(),a()(g.A,v),g.A&&g.A.locals&&g.A.locals}}]);