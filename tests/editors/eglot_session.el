;;; eglot_session.el --- a user's session in Emacs with eglot and dmem-lsp  -*- lexical-binding: t; coding: utf-8 -*-
;;
;; Run by tests/editors/test_eglot.py as `emacs --batch -l eglot_session.el FILE' with
;; DMEM_TEST_CMD (the server command, JSON), DMEM_TEST_SETTINGS (JSON), DMEM_TEST_OUT (where
;; the results go, JSON), DMEM_TEST_TIMEOUT (seconds for the whole session) and
;; DMEM_TEST_SCENARIO.  It configures eglot as the README says and opens FILE, then:
;;   complete-and-explain (the default): types `a' after `return ' on line 5 and completes
;;     with `completion-at-point' (eglot's function), then runs the code action "Explain with
;;     dmem" through `eglot-code-actions';
;;   quit-after-edit: once the server holds the folder's memory (DMEM_TEST_LOCK, its lock file,
;;     has a pid), adds a function at the end of FILE, waits for eglot to send the change (the
;;     user pauses), and quits at once without saving, as `C-x C-c' does: `kill-emacs'.
;; Every wait runs Emacs' event loop until a condition holds, or gives up at the deadline.

(require 'eglot)
(require 'json)
(set-language-environment "UTF-8")

(defvar dmem-test-deadline (+ (float-time) (string-to-number (getenv "DMEM_TEST_TIMEOUT"))))
(defvar dmem-test-results nil "An alist, written as JSON at the end.")

(defun dmem-test-finish (code)
  (let ((coding-system-for-write 'utf-8))
    (write-region (json-encode dmem-test-results) nil (getenv "DMEM_TEST_OUT")))
  (kill-emacs code))

(defun dmem-test-messages ()
  (with-current-buffer (messages-buffer) (buffer-substring-no-properties (point-min) (point-max))))

(defun dmem-test-wait (what predicate)
  "Run the event loop until PREDICATE returns non-nil; fail the session at the deadline."
  (let (value)
    (while (not (setq value (funcall predicate)))
      (when (> (float-time) dmem-test-deadline)
        (push (cons 'failure (format "timed out waiting for %s" what)) dmem-test-results)
        (push (cons 'messages (dmem-test-messages)) dmem-test-results)
        (dmem-test-finish 1))
      (accept-process-output nil 0.05))
    value))

(defun dmem-test-open ()
  "Configure eglot as the README says, open FILE and wait for the model to load."
  (add-to-list 'eglot-server-programs
               (cons '(python-mode python-ts-mode)
                     (json-parse-string (getenv "DMEM_TEST_CMD") :array-type 'list)))
  (setq-default eglot-workspace-configuration
                (list (cons :dmem (json-parse-string (getenv "DMEM_TEST_SETTINGS")
                                                     :object-type 'plist :array-type 'list))))
  (add-hook 'python-mode-hook #'eglot-ensure)
  (setq eglot-connect-timeout 120) ; a loaded test machine starts Python slowly

  (find-file (car command-line-args-left))
  (run-hooks 'post-command-hook)   ; what the first command does in an interactive Emacs
  (dmem-test-wait "eglot to manage the buffer" (lambda () eglot--managed-mode))
  ;; eglot 1.9 has no $/progress: the server says what it does in messages
  (dmem-test-wait "the model to load"
                  (lambda () (string-match-p "dmem-lsp: ready" (dmem-test-messages)))))

(defun dmem-test-complete-and-explain ()
  ;; completion after a typed word
  (goto-char (point-min))
  (forward-line 4)
  (end-of-line)
  (insert "a")
  (completion-at-point)
  (push (cons 'line (buffer-substring-no-properties (line-beginning-position) (line-end-position)))
        dmem-test-results)
  (save-buffer)

  ;; the code action "Explain with dmem" on lines 1-5, chosen from eglot's prompt
  (let ((completing-read-function (lambda (&rest _) "Explain with dmem"))
        (last-nonmenu-event ?x)) ; a keyboard event: eglot prompts rather than pops up a menu
    (eglot-code-actions (point-min) (point-max) nil t))
  (push (cons 'explanation
              (dmem-test-wait "the explanation"
                              (lambda ()
                                (let ((messages (dmem-test-messages)))
                                  (and (string-match "dmem: main\\.py, lines 1–5 (in [^)]+):" messages)
                                       (substring messages (match-beginning 0)))))))
        dmem-test-results)
  (push (cons 'messages (dmem-test-messages)) dmem-test-results)
  (dmem-test-finish 0))

(defun dmem-test-quit-after-edit ()
  (let ((lock (getenv "DMEM_TEST_LOCK")))
    (dmem-test-wait "the server to open the folder's memory"
                    (lambda () (and (file-exists-p lock) (> (file-attribute-size (file-attributes lock)) 0)))))
  (goto-char (point-max))
  (insert "\n\ndef sub(a, b):\n    return a - b\n")
  ;; eglot sends the change once Emacs has been idle for `eglot-send-changes-idle-time' (the
  ;; user pauses); batch Emacs is never idle, so its idle timer is run as that pause would
  (when eglot--change-idle-timer
    (timer-event-handler eglot--change-idle-timer))
  (dmem-test-wait "eglot to send the change" (lambda () (null eglot--recent-changes)))
  (push (cons 'messages (dmem-test-messages)) dmem-test-results)
  (let ((coding-system-for-write 'utf-8))
    (write-region (json-encode dmem-test-results) nil (getenv "DMEM_TEST_OUT")))
  (set-buffer-modified-p nil)      ; C-x C-c, answering "no" to saving main.py
  (kill-emacs 0))

(condition-case error
    (progn
      (dmem-test-open)
      (if (equal (getenv "DMEM_TEST_SCENARIO") "quit-after-edit")
          (dmem-test-quit-after-edit)
        (dmem-test-complete-and-explain)))
  (error
   (push (cons 'failure (error-message-string error)) dmem-test-results)
   (push (cons 'messages (dmem-test-messages)) dmem-test-results)
   (dmem-test-finish 1)))

;;; eglot_session.el ends here
